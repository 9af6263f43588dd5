"""Build a classifier by name: any torchvision classification model, or lifeloop's small CNN."""

from __future__ import annotations

import difflib
from functools import cache
from typing import Any

from torch import nn

from lifeloop.errors import ExportError

SMALL_CNN = "small_cnn"

# torchvision heads that only training uses: in eval mode these models return the main logits
# alone. A checkpoint may hold them or not (torchvision's pretrained googlenet drops them), so
# the served model is built without them and their weights are ignored.
AUX_HEADS: dict[str, tuple[str, ...]] = {
    "googlenet": ("aux1.", "aux2."),
    "inception_v3": ("AuxLogits.",),
}


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


def build(arch: str, num_classes: int, *, aux_heads: bool = True) -> nn.Module:
    """A freshly initialised model with `num_classes` outputs (random weights, no download).

    `aux_heads=False` leaves out the training-only heads of the AUX_HEADS architectures."""
    check_architecture(arch)
    if num_classes < 2:
        raise ExportError(f"a classifier needs at least 2 classes, got {num_classes}")
    if arch == SMALL_CNN:
        return SmallCNN(num_classes)
    import torchvision

    options: dict[str, bool] = {}
    if arch in AUX_HEADS:
        # init_weights=True is torchvision's default; saying so silences its FutureWarning.
        options = {"aux_logits": aux_heads, "init_weights": True}
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **options)


def without_aux_heads(arch: str, state: dict[str, Any]) -> dict[str, Any]:
    """`state` less the weights of `arch`'s training-only heads (the same dict if it has none)."""
    prefixes = AUX_HEADS.get(arch)
    if not prefixes or not any(k.startswith(prefixes) for k in state):
        return state
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}
