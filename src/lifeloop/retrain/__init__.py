"""Datasets and training; the feedback loop grows here."""

from lifeloop.datasets import ImageFolder, scan, write_digits
from lifeloop.errors import DataError
from lifeloop.retrain.training import TrainResult, evaluate, train

__all__ = ["DataError", "ImageFolder", "TrainResult", "evaluate", "scan", "train", "write_digits"]
