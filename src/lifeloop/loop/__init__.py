"""The learning loop: the router and its prediction log, feedback, the store, rollout."""

from lifeloop.loop.errors import FeedbackError, RetrainError, RolloutError, StoreError
from lifeloop.loop.install import install_router
from lifeloop.loop.policy import RoutingPolicy, read_policy
from lifeloop.loop.rollout import Rollout
from lifeloop.loop.store import Store, default_store_url

__all__ = [
    "FeedbackError",
    "RetrainError",
    "Rollout",
    "RolloutError",
    "RoutingPolicy",
    "Store",
    "StoreError",
    "default_store_url",
    "install_router",
    "read_policy",
]
