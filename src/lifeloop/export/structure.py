"""The channel counts of a structurally pruned model, as plain data: what a checkpoint records
so that the standard architecture can be reshaped to fit the pruned weights before they load.

Torch-Pruning removes channels physically, so a pruned ResNet-18 is no longer what
`build("resnet18", n)` makes. Its own serialization pickles module objects; a lifeloop
checkpoint stays data (`torch.load(weights_only=True)`), so it records each convolution's,
linear layer's and batch norm's sizes instead, and `reshape` rebuilds those modules."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lifeloop.errors import CheckpointError

Structure = dict[str, dict[str, Any]]
LOOSE = "parameters"  # a module's own parameters outside any layer (ConvNeXt's layer_scale)


def structure_of(model: nn.Module) -> Structure:
    """{module name: its sizes} for every convolution, linear layer and batch norm."""
    found: Structure = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            found[name] = {
                "in": module.in_channels,
                "out": module.out_channels,
                "groups": module.groups,
            }
        elif isinstance(module, nn.Linear):
            found[name] = {"in": module.in_features, "out": module.out_features}
        elif isinstance(module, nn.BatchNorm2d):
            found[name] = {"features": module.num_features}
        elif isinstance(module, nn.LayerNorm):
            found[name] = {"shape": list(module.normalized_shape)}
        loose = {
            key: list(value.shape)
            for key, value in module.named_parameters(recurse=False)
            if not isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d | nn.LayerNorm)
        }
        if loose:
            found.setdefault(name, {})[LOOSE] = loose
    return found


def reshape(model: nn.Module, structure: Structure) -> nn.Module:
    """Replace each module whose recorded sizes differ with one of those sizes (same kernel,
    stride, padding and bias), in place; the weights are loaded afterwards."""
    modules = dict(model.named_modules())
    for name, sizes in structure.items():
        module = modules.get(name)
        if module is None:
            raise CheckpointError(
                f"the checkpoint's pruned structure names {name!r}, which the architecture "
                "lacks; prune again from a checkpoint of this architecture"
            )
        for key, shape in sizes.get(LOOSE, {}).items():
            if list(getattr(module, key).shape) != shape:
                setattr(module, key, nn.Parameter(torch.zeros(shape)))
        layer = {k: v for k, v in sizes.items() if k != LOOSE}
        replacement = _resized(module, layer) if layer else module
        if replacement is not module:
            parent_name, _, attr = name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, attr, replacement)
    return model


def _resized(module: nn.Module, sizes: dict[str, int]) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        if (module.in_channels, module.out_channels, module.groups) == (
            sizes["in"],
            sizes["out"],
            sizes["groups"],
        ):
            return module
        return nn.Conv2d(
            sizes["in"],
            sizes["out"],
            module.kernel_size,  # type: ignore[arg-type]
            stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding,  # type: ignore[arg-type]
            dilation=module.dilation,  # type: ignore[arg-type]
            groups=sizes["groups"],
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    if isinstance(module, nn.Linear):
        if (module.in_features, module.out_features) == (sizes["in"], sizes["out"]):
            return module
        return nn.Linear(sizes["in"], sizes["out"], bias=module.bias is not None)
    if isinstance(module, nn.LayerNorm):
        if list(module.normalized_shape) == sizes["shape"]:
            return module
        # its own class: ConvNeXt's LayerNorm2d has LayerNorm's arguments and another forward
        return type(module)(
            sizes["shape"],
            eps=module.eps,
            elementwise_affine=module.elementwise_affine,
            bias=module.bias is not None,
        )
    if isinstance(module, nn.BatchNorm2d):
        if module.num_features == sizes["features"]:
            return module
        return nn.BatchNorm2d(
            sizes["features"],
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
    raise CheckpointError(
        f"the pruned structure records sizes for a {type(module).__name__}, which lifeloop "
        "cannot resize; prune again with `lifeloop prune`"
    )
