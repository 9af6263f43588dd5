"""One training step of the small CNN, run plainly or under torchrun by test_distributed.py:
rank 0 saves the gradients and the batch-norm running statistics to argv[1]."""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lifeloop.export.architectures import build
from lifeloop.retrain.distributed import World, process_group, synchronise_batch_norm

BATCH = 24


def main(out: str, fail: bool) -> None:
    with process_group() as place:
        step(out, place, fail)


def step(out: str, place: World, fail: bool) -> None:
    if fail and place.is_leader:  # the other ranks are left waiting in the backward's all-reduce
        raise RuntimeError("rank 0 failed on purpose")
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32) * 2 + 0.5
    y = torch.randint(0, 10, (BATCH,))
    model = build("small_cnn", 10)
    trainee = DistributedDataParallel(synchronise_batch_norm(model)) if place.distributed else model
    trainee.train()
    shard = torch.arange(BATCH)[place.rank :: place.size]
    loss = nn.CrossEntropyLoss(reduction="sum")(trainee(x[shard]), y[shard]) * place.size / BATCH
    loss.backward()
    network = trainee.module if place.distributed else trainee
    if place.is_leader:
        grads = {f"grad:{k}": p.grad for k, p in network.named_parameters()}
        buffers = {k: v for k, v in network.state_dict().items() if "running" in k}
        torch.save({**grads, **buffers}, out)


if __name__ == "__main__":
    main(sys.argv[1], fail=sys.argv[2:] == ["--rank0-fails"])
