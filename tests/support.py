"""Helpers shared by several test files (on sys.path through pytest's `pythonpath`)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.engine.callbacks import Callback, LoopState
from lowbit.quant.base import Quantizer

# `--set` arguments of a seconds-long CLI run on synthetic data.
TINY_RUN_ARGS = ["--set", "model.name=small_cnn", "--set", "model.width=0.25",
                 "--set", "data.name=synthetic", "--set", "train.progress=false"]  # fmt: skip


def tiny_run_args(**settings: object) -> list[str]:
    """TINY_RUN_ARGS plus `--set key=value` for each setting (dots spelled as '__')."""
    extra = [arg for k, v in settings.items() for arg in ("--set", f"{k.replace('__', '.')}={v}")]
    return [*TINY_RUN_ARGS, *extra]


class SymUniform(Quantizer):
    """Test quantizer: per-tensor uniform, s = max|x| / n, levels k*s for |k| <= n.

    `learned=True` adds a parameter (like a learned step size) so quantizer state shows up in
    state_dicts and size accounting.
    """

    name = "test_sym_uniform"

    def __init__(self, bits: int = 2, learned: bool = False) -> None:
        super().__init__(bits)
        self.learned = learned
        if learned:
            self.step = nn.Parameter(torch.tensor(1.0))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = 2 ** (self.bits - 1) - 1
        s = x.detach().abs().max().clamp_min(1e-8) / n
        return torch.round(x.detach() / s).clamp(-n, n).int(), s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x)) + (x - x.detach())

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        n = 2 ** (self.bits - 1) - 1
        return torch.arange(-n, n + 1, dtype=x.dtype) * x.abs().max().clamp_min(1e-8) / n


class CrashAt(Callback):
    """Simulates a crash at the start of `epoch` (after the previous epoch's checkpoint), or,
    given `step`, before that optimizer step (after backward, inside an epoch)."""

    def __init__(self, epoch: int = -1, step: int = -1) -> None:
        self.epoch, self.step = epoch, step

    def on_epoch_start(self, state: LoopState) -> None:
        if state.epoch == self.epoch:
            raise RuntimeError("simulated crash")

    def before_step(self, state: LoopState) -> None:
        if state.step == self.step:
            raise RuntimeError("simulated crash")
