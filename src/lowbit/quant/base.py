"""The quantizer interface every method shares.

A quantizer is a small `nn.Module`: `forward(x)` returns the fake-quantized tensor (values on
the quantization grid, float dtype, gradients by the quantizer's straight-through rule).
It declares `bits`, can list the `levels(x)` it would use for tensor `x` (its codebook), and
`encode(x)` -> (integer codes, scale) such that `decode(codes, scale) == forward(x)` exactly.
Its constructor arguments are its config: `to_config()` returns them with a `name`, and
`lowbit.quant.get_quantizer(config)` rebuilds an equal quantizer.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, ClassVar

import torch
from torch import nn


class Quantizer(nn.Module):
    """Base class. Subclasses set `name`, implement `forward`, `levels` and `encode`."""

    name: ClassVar[str] = ""
    bits: int

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not isinstance(bits, int) or isinstance(bits, bool):
            raise TypeError(f"bits must be an int, got {bits!r}")
        self.bits = bits

    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """Sorted 1-d tensor of every value `forward(x)` may output (per tensor).

        Per-channel quantizers return shape (C, L): one row of levels per output channel.
        """
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(integer codes, scale) with `decode(codes, scale)` equal to `forward(x)`."""
        raise NotImplementedError

    # ---- capabilities downstream code asks for (fold, pack, plots, recipes) --------------
    has_codebook: ClassVar[bool] = False  # a finite code set (`code_range`): packable

    @property
    def enabled(self) -> bool:
        """Whether forward quantizes (False: a clip-only stage, such as GDRQ's reshaping)."""
        return True

    def set_enabled(self, flag: bool) -> None:
        """Switch quantization on or off; a quantizer without a clip-only mode is always on."""
        if not flag:
            raise ValueError(f"{self.name} has no clip-only mode")

    @property
    def linear_codes(self) -> bool:
        """Whether `decode(codes, scale)` is `codes * scale` (integer kernels, BN folding)."""
        return True

    def frozen_clip(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The constant clip T of a uniform activation grid at evaluation (0-d, in `dtype`), so
        the step folds into BatchNorm; ValueError saying why when this quantizer has none."""
        raise ValueError(f"{self.name} activations are not uniform codes * step")

    def decode(self, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Default: value = code * scale (scale broadcast per tensor or per channel)."""
        return codes.to(scale.dtype) * _broadcast(scale, codes)

    def to_config(self) -> dict[str, Any]:
        """Constructor arguments plus `name`: `get_quantizer(q.to_config())` rebuilds `q`."""
        params = inspect.signature(type(self).__init__).parameters
        cfg = {k: getattr(self, k) for k in params if k != "self"}
        return {"name": self.name, **cfg}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """A state dict holding none of this quantizer's keys (a float checkpoint loaded into a
        quantized model) leaves its state as initialised instead of failing a strict load;
        one holding some of them loads as usual (and missing ones are reported)."""
        own = [prefix + k for k in (*self._parameters, *self._buffers)
               if k not in self._non_persistent_buffers_set]
        if own and not any(k in state_dict for k in own):
            return
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.to_config().items() if k != "name")


def _broadcast(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-channel scale (C,) to broadcast over dim 0 of `like`."""
    if scale.dim() == 1 and scale.numel() > 1:
        return scale.view(-1, *([1] * (like.dim() - 1)))
    return scale


def check_finite(x: torch.Tensor, what: str = "tensor") -> None:
    """Raise a clear ValueError on empty input or NaN/inf values (reads the data: a reduction
    and a host sync). Quantizers call it only with debug checks on (`set_debug_checks`); use
    it where it costs nothing, e.g. on weights at load time."""
    if x.numel() == 0:
        raise ValueError(f"cannot quantize an empty {what}")
    if not torch.isfinite(x.detach().sum()):
        raise ValueError(f"cannot quantize a {what} holding NaN or inf values")


_DEBUG = {"checks": os.environ.get("LOWBIT_DEBUG_CHECKS", "") not in ("", "0")}


def set_debug_checks(enabled: bool) -> None:
    """Turn the data checks (`check_finite`) of every quantizer call on or off (default off;
    on when the environment sets LOWBIT_DEBUG_CHECKS=1). Off, quantizers only read metadata."""
    _DEBUG["checks"] = bool(enabled)


def check_input(x: torch.Tensor, what: str = "tensor", allow_empty: bool = False) -> None:
    """The input checks run on every quantizer call: metadata only (dtype, size), so they cost
    nothing and never break a torch.compile graph. Integer, bool and complex tensors raise a
    TypeError, empty ones (unless `allow_empty`) a ValueError; NaN/inf only with debug checks."""
    if not x.is_floating_point():
        raise TypeError(f"cannot quantize a {what} of dtype {x.dtype}: lowbit quantizers take "
                        "float16, bfloat16, float32 or float64 tensors")
    if x.numel() == 0 and not allow_empty:
        raise ValueError(f"cannot quantize an empty {what}")
    if _DEBUG["checks"] and not torch.compiler.is_compiling():
        check_finite(x, what)


def check_levels_fit(dtype: torch.dtype, max_code: int, what: str) -> None:
    """A ValueError unless every integer code up to `max_code` is exact in `dtype` (float16
    holds integers exactly up to 2048, bfloat16 up to 256): otherwise the output would leave
    the grid (or overflow to inf) and decode would differ from forward."""
    exact = round(2 / torch.finfo(dtype).eps)  # 2^(mantissa bits + 1)
    if max_code > exact:
        raise ValueError(f"{what} needs {max_code} exact integer levels, more than {dtype} "
                         f"holds ({exact}); use fewer bits or float32 inputs")


def check_bits(name: str, bits: int, lo: int, hi: int) -> None:
    """A one-line ValueError unless `lo <= bits <= hi` (quantizer constructors)."""
    if not lo <= bits <= hi:
        allowed = str(lo) if lo == hi else f"{lo}..{hi}"
        raise ValueError(f"{name} supports bits {allowed}, got {bits}")
