"""Training, distributed training, and the retrain cycle that learns from feedback."""

from lifeloop.datasets import ImageFolder, scan, write_digits
from lifeloop.errors import DataError
from lifeloop.retrain.training import TrainResult, evaluate, train

__all__ = ["DataError", "ImageFolder", "TrainResult", "evaluate", "scan", "train", "write_digits"]
