"""Group-Net's `BinaryConv2d` on the integer path: constant padding and XNOR activation scales.

A `BinaryConv2d` pads its *quantized* input with `pad_value` (+1 / -1 for sign activations, so
the input stays binary) and may multiply its output by XNOR-Net's K (`act_scale`). On the
integer path it becomes the layer's `IntegerConv2d` (`core`), wrapped in an
`IntegerBinaryConv2d` when it pads explicitly or scales:
- on sign inputs with binary weights the core's XNOR kernel pads with +-1 itself
  (`IntegerConv2d(pad_value=...)`: no padded copy of the input, no border correction for +1);
- otherwise (other kernels, uneven padding) the core has no padding of its own and the float
  input is padded with `pad_value` before the core encodes it. `pad_value` must be a fixed
  point of the layer's input quantization (checked when the layer quantizes its input:
  sign(+-1) = +-1, or a k-bit grid value; a float input takes the value as it is), so the
  padded codes are the codes PyTorch pads with and the core's accumulator equals
  `conv2d(padded codes, weight codes)` exactly;
- the core's output (one rescale per output channel) is multiplied by
  K = avg_pool(mean_c |x|) of the float input (`lowbit.nn.multibranch.xnor_scale`), a float
  factor per output pixel outside the integer accumulation, as in XNOR-Net.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowbit.errors import LowbitError
from lowbit.nn.multibranch import BinaryConv2d, xnor_scale


class IntegerBinaryConv2d(nn.Module):
    """`core(pad(x, pad_value)) * K(x)` (see the module docstring).

    Args:
        core: the layer's integer convolution, without padding when `pad` is given.
        pad: (left, right, top, bottom) padding with `pad_value`, or None.
        pad_value: the constant the input is padded with.
        window: (kernel size, stride, padding) of K's average pool, or None (no K).
    """

    def __init__(self, core: nn.Module, pad: tuple[int, int, int, int] | None, pad_value: float,
                 window: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...] | int] | None
                 ) -> None:
        super().__init__()
        self.core, self.pad, self.pad_value, self.window = core, pad, pad_value, window

    def forward(self, x: Tensor) -> Tensor:
        y = self.core(x if self.pad is None else F.pad(x, self.pad, value=self.pad_value))
        return y if self.window is None else y * xnor_scale(x, *self.window).to(y.dtype)

    def extra_repr(self) -> str:
        return f"pad={self.pad}, pad_value={self.pad_value}, act_scale={self.window is not None}"


def core_padding(m: nn.Module, kernel: str) -> dict[str, Any]:
    """How the integer core of `m` (running `kernel`) pads, as `_from_layer` keywords: `{}` its
    own zero padding; `{"pad_value": v}` the XNOR kernel pads with +-1 itself; `{"padding": 0}`
    none, the input is padded explicitly first (`wrap_binary(explicit_pad=True)`)."""
    pad = m.explicit_pad() if isinstance(m, BinaryConv2d) else None
    if pad is None:
        return {}
    if kernel == "xnor" and m.pad_value in (-1.0, 1.0) and len(set(pad)) == 1:
        return {"pad_value": int(m.pad_value)}  # type: ignore[arg-type]
    return {"padding": 0}


def wrap_binary(m: nn.Module, core: nn.Module, name: str = "layer", explicit_pad: bool = False
                ) -> nn.Module:
    """`core` with `m`'s XNOR scale, and its padding value when `explicit_pad` (see
    `core_padding`), when `m` is a `BinaryConv2d` using them.

    Raises:
        LowbitError: `pad_value` is not a value the layer's input quantization keeps as is.
    """
    if not isinstance(m, BinaryConv2d):
        return core
    pad = m.explicit_pad() if explicit_pad else None
    if pad is None and not m.act_scale:
        return core
    value = float(m.pad_value or 0.0)
    if pad is not None and m.act_quant is not None:
        with torch.no_grad():
            kept = float(m.act_quant(torch.full((1,), value, device=m.weight.device)).item())
        if kept != value:
            raise LowbitError(f"{name} pads with {value}, which its input quantizer maps to "
                              f"{kept}: the padded codes would not be the layer's")
    return IntegerBinaryConv2d(core, pad, value, m.scale_window() if m.act_scale else None)
