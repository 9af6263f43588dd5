"""Build a classifier by name: any torchvision classification model, or lifeloop's small CNN."""

from __future__ import annotations

import difflib
from functools import cache

from torch import nn

from lifeloop.errors import ExportError

SMALL_CNN = "small_cnn"


class SmallCNN(nn.Module):
    """A compact CNN for small images (the demo's digits): three conv blocks and a linear head."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(in_channels, width),
            _block(width, width * 2),
            _block(width * 2, width * 4),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(width * 4, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.features(x))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


@cache
def torchvision_classifiers() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def known_architectures() -> tuple[str, ...]:
    return (SMALL_CNN, *torchvision_classifiers())


def check_architecture(arch: str) -> None:
    if arch in known_architectures():
        return
    close = difflib.get_close_matches(arch, known_architectures(), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "see `lifeloop export --help`"
    raise ExportError(
        f"unknown architecture {arch!r}: use {SMALL_CNN} or a torchvision classifier; {hint}"
    )


def build(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised model with `num_classes` outputs (random weights, no download)."""
    check_architecture(arch)
    if num_classes < 2:
        raise ExportError(f"a classifier needs at least 2 classes, got {num_classes}")
    if arch == SMALL_CNN:
        return SmallCNN(num_classes)
    import torchvision

    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
