"""Datasets and training; the feedback loop grows here."""

from lifeloop.retrain.datasets import DataError, ImageFolder, scan, write_digits
from lifeloop.retrain.training import TrainResult, evaluate, train

__all__ = ["DataError", "ImageFolder", "TrainResult", "evaluate", "scan", "train", "write_digits"]
