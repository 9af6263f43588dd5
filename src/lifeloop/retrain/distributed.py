"""Data-parallel training under `torchrun`: the process group, the shard of each batch, and a
batch norm that synchronises its statistics on CPU too.

Each rank takes its share of every global mini-batch, batch norm statistics are reduced over
all ranks, and each rank's loss is scaled so that DDP's gradient average equals the gradient
of the mean loss over the whole batch. So N processes take the same steps as one process with
the same seed, up to the order of floating-point sums. (torch's SyncBatchNorm runs on GPUs
only; `SyncBatchNormCPU` does the same reduction with gloo.)"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place in the process group (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env() -> World:
    """Join the process group `torchrun` describes in the environment: gloo on CPU, nccl when
    each rank has a GPU. A plain run (no WORLD_SIZE, or 1) starts nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return world()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return world()


def shutdown(*, together: bool = True) -> None:
    """Leave the process group. `together`: wait for every rank first, since a rank that
    tears gloo down while another is still in a collective or writing aborts ("terminate
    called without an active exception"; about one 2-rank run in seven without the barrier).
    On an error path pass together=False: the other ranks may be inside a collective this
    rank will never join, and a barrier would wait for them until gloo's timeout."""
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def process_group() -> Iterator[World]:
    """`init_from_env()`, then `shutdown()`: together when the block ends normally, at once
    when it raises."""
    place = init_from_env()
    try:
        yield place
    except BaseException:
        shutdown(together=False)
        raise
    shutdown()


def broadcast(value: object) -> object:
    """Rank 0's `value`, on every rank."""
    if not world().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: every rank's input feeds every rank's output, so
    the gradient of each input is the sum of all ranks' output gradients. (torch's own
    differentiable all_reduce is deprecated without a public successor.)"""

    @staticmethod
    def forward(ctx: object, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(tensor)  # type: ignore[no-any-return]


class SyncBatchNormCPU(_BatchNorm):
    """Batch norm whose batch statistics are the mean and variance over every rank's shard.
    The reduction is differentiable, so the backward pass is that of one big batch."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and world().distributed):
            return super().forward(input)
        channels = input.size(1)
        dims = [0, *range(2, input.dim())]
        # Two passes, mean then squared deviations, as batch norm itself computes them:
        # E[x^2] - E[x]^2 in float32 loses digits that the training run then amplifies.
        count = input.new_tensor([input.numel() // channels])
        total = all_reduce(torch.cat([input.sum(dims), count]))
        n = total[-1]
        mean = total[:channels] / n
        shape = (1, channels) + (1,) * (input.dim() - 2)
        centred = input - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach(), momentum)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.lerp_(unbiased, momentum)  # type: ignore[union-attr]
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def synchronise_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of `model` whose batch norms reduce over all ranks; its state_dict has the same
    keys, so trained weights load back into the plain model."""
    if torch.cuda.is_available() and next(model.parameters()).is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    trainee = copy.deepcopy(model)
    for name, module in list(trainee.named_modules()):
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNormCPU):
            synced = SyncBatchNormCPU(
                module.num_features,
                eps=module.eps,
                momentum=module.momentum,
                affine=module.affine,
                track_running_stats=module.track_running_stats,
            )
            synced.load_state_dict(module.state_dict())
            parent = trainee.get_submodule(name.rpartition(".")[0]) if "." in name else trainee
            setattr(parent, name.rpartition(".")[2], synced)
    return trainee
