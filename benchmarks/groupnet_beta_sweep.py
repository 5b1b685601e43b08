"""Choose Group-Net's activation clip beta for rows that start from the float ResNet-20.

The paper fixes beta and trains k-bit rows from scratch, so BN learns to fit [0, beta]; the
shipped CPU recipes start from the float checkpoint instead, whose BN -> ReLU outputs reach
well past 1. For each (bits, beta): build v1 with K = 5 from the float checkpoint, re-estimate
the BN statistics on 20 training batches (in train mode, no weight changes), and measure top-1
on the last 2,000 TRAINING images, which the re-estimation never sees (the test set is not used).

    LOWBIT_DATA=../shared/data python benchmarks/groupnet_beta_sweep.py

Writes benchmarks/results/groupnet_beta_sweep.json (command, commit, date, machine, figures).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/groupnet_beta_sweep.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from benchmarks.common import provenance, write_result
from lowbit.data import BatchLoader, load_dataset
from lowbit.data.base import ImageData
from lowbit.engine import checkpoint as ckpt
from lowbit.engine.evaluate import evaluate
from lowbit.groupnet import GroupNetSpec, expand
from lowbit.models import create_model

FLOAT = "benchmarks/checkpoints/resnet20_cifar10_float.safetensors"
GRID = {4: [1.0, 2.0, 4.0, 8.0, 16.0], 2: [1.0, 2.0, 4.0, 8.0, 16.0]}


def float_model() -> nn.Module:
    model = create_model("resnet20")
    tensors, _ = ckpt.load_checkpoint(FLOAT)
    ckpt.load_model_state(model, ckpt.split_prefix(tensors, "model"), FLOAT)
    return model


def recalibrate(model: nn.Module, loader: BatchLoader, batches: int) -> nn.Module:
    """Cumulative BN statistics over `batches` training batches; weights untouched."""
    for bn in [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for x, _ in itertools.islice(loader, batches):
            model(x)
    return model.eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    prov = provenance("groupnet_beta_sweep.py", argv)
    train = load_dataset("cifar10", os.environ.get("LOWBIT_DATA")).train
    n = args.held_out
    held = ImageData(train.images[-n:], train.labels[-n:], train.num_classes, train.mean,
                     train.std, flip=False, pad=0)
    fit = ImageData(train.images[:-n], train.labels[:-n], train.num_classes, train.mean, train.std)
    loader = BatchLoader(fit, 128, train=True, seed=0)
    figures: dict[str, float] = {}
    for bits, betas in GRID.items():
        for beta in betas:
            spec = GroupNetSpec(structure="v1", bases=5, act_bits=bits, beta=beta)
            model = recalibrate(expand(float_model(), spec), loader, args.batches)
            figures[f"w1a{bits} beta={beta}"] = evaluate(model, held, 500)["top1"]
            print(f"W1A{bits} beta {beta}: {figures[f'w1a{bits} beta={beta}']:.2f} %", flush=True)
    out = {"benchmark": "groupnet_beta_sweep", "model": "resnet20", "structure": "v1", "K": 5,
           "bn_batches": args.batches, "held_out_train_images": n, "top1": figures}
    if not args.no_write:
        print(f"wrote {write_result('groupnet_beta_sweep', out, args.out_dir, prov)}")
    return out


if __name__ == "__main__":
    main()
