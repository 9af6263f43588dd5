"""Run the real tritonserver locally, and the Triton models lifeloop ships."""

from lifeloop.errors import ServerError
from lifeloop.serve.launcher import ControlMode, ServerConfig, TritonServer, free_port
from lifeloop.serve.runtime import Runtime, prepare_runtime

__all__ = [
    "ControlMode",
    "Runtime",
    "ServerConfig",
    "ServerError",
    "TritonServer",
    "free_port",
    "prepare_runtime",
]
