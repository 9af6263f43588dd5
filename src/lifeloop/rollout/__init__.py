"""What the servers serve: routing policies, rollouts, and loading on every replica."""

from lifeloop.errors import ReplicaError, RolloutError
from lifeloop.rollout.policy import RoutingPolicy, read_policy
from lifeloop.rollout.replicas import ReplicaResult, ServerUrls, load_everywhere, server_urls
from lifeloop.rollout.rollout import Rollout

__all__ = [
    "ReplicaError",
    "ReplicaResult",
    "Rollout",
    "RolloutError",
    "RoutingPolicy",
    "ServerUrls",
    "load_everywhere",
    "read_policy",
    "server_urls",
]
