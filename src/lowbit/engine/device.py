"""Where training and evaluation run: `train.device` resolved once, and the helpers that follow
a model to its device (batches, bf16 autocast).

`cpu` is the default and what CI and the tests use; `cuda`, `cuda:N` and `auto` (CUDA when there
is one) run the same loop, recipes and quantizers on a GPU: quantizers only take their numpy
fast paths for CPU tensors (`lowbit.quant.functional.use_numpy`). Asking for CUDA on a machine
without it is a one-line configuration error, never a silent fallback.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from lowbit.engine.rundir import cpu_bf16_native
from lowbit.schema import ConfigError


def resolve_device(name: str) -> torch.device:
    """The torch device for a `train.device` value.

    Raises:
        ConfigError: CUDA was asked for (explicitly) and this machine has none, or too few GPUs.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name} asked for, but this torch build or machine "
                              "has no CUDA (use train.device=cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {name} asked for, but this machine has "
                              f"{torch.cuda.device_count()} GPU(s)")
    return device


def bf16_native(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (emulated bf16 is many times slower than fp32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_bf16_native()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def autocast(enabled: bool,
             device: torch.device | str = "cpu") -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on `device` when `enabled`, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def to_device(batch: tuple[torch.Tensor, torch.Tensor],
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (x, y) on `device` (no copy when it is there already); keeps x's memory format."""
    x, y = batch
    if x.device == device:
        return x, y
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The random generators' states a checkpoint keeps: torch's, and the GPU's on CUDA (so
    dropout and other GPU random ops resume exactly too)."""
    states = {"rng/torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["rng/cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what `rng_states` saved (a CPU run's checkpoint has no GPU state)."""
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)
