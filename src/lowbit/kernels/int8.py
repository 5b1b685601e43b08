"""Integer convolution of k-bit activation codes with int8 weight codes on oneDNN's
u8 x s8 -> s32 kernel (`torch.ops.onednn.qconv_pointwise`, the kernel PyTorch's x86 int8
inference uses; VNNI where the CPU has it).

Input codes x in [lo, hi] (hi - lo <= 255) are shifted to uint8 by their lowest code, which
becomes the zero point, so zero padding stays a true zero. The kernel accumulates in int32 and
writes float32: `acc * scale_c + offset_c` (one float32 rounding), or the accumulators themselves
(scale 1, no offset), which float32 holds exactly below 2^24.

`exact_bounds` says when the result is exact: every accumulator below 2^24 in magnitude (the
float32 readout), and every pair of u8 x s8 products below 2^15 (without VNNI, oneDNN's AVX2 /
AVX-512 kernels add product pairs in int16 with saturation; the same rule bounds the code gains
of `lowbit.export.onnx_quant`).
"""

from __future__ import annotations

import torch
from torch import Tensor

AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv_pointwise")
PAIR_LIMIT = 2**15 - 1  # int16 sums of two u8 x s8 products (pre-VNNI x86)
EXACT_F32 = 2**24


def pair_sum_ok(max_input: int, max_weight: int) -> bool:
    """Two products of u8 inputs up to `max_input` and s8 weights up to `max_weight` fit int16."""
    return 2 * max_input * max_weight <= PAIR_LIMIT


def exact_bounds(lo: int, hi: int, w: Tensor) -> bool:
    """The kernel gives exact results for input codes in [lo, hi] and weight codes `w`."""
    if not AVAILABLE or hi - lo > 255 or w.numel() == 0:
        return False
    if int(w.min()) < -128 or int(w.max()) > 127:
        return False
    l1 = int(w.abs().flatten(1).sum(1).max())  # the largest sum of |w| over one output
    # the true sum is read out in float32; the shifted one (x - lo, before the zero-point
    # correction) stays in int32
    return (max(abs(lo), abs(hi)) * l1 < EXACT_F32 and (hi - lo) * l1 < 2**31
            and pair_sum_ok(hi - lo, int(w.abs().max())))


def prepack(w: Tensor, stride: int, padding: int, lo: int) -> Tensor:
    """int8 weight codes in oneDNN's layout for `conv2d` (an opaque tensor: not state)."""
    return torch.ops.onednn.qconv_prepack(w.to(torch.int8), torch.ones(w.shape[0]), 1.0, -lo,
                                          [stride] * 2, [padding] * 2, [1, 1], 1, None)


def conv2d(x: Tensor, w: Tensor, stride: int, padding: int, lo: int,
           packed: Tensor | None = None, scale: Tensor | None = None,
           offset: Tensor | None = None) -> Tensor:
    """conv2d(x, w) * scale_c + offset_c as float32 (groups 1, dilation 1), x the input codes in
    [lo, lo + 255] (an integer tensor or integer-valued floats), w int8 weight codes. Without
    scale and offset: the accumulators. `packed`: `prepack(w, ...)` (made when None).

    The output is channels_last, as oneDNN writes it (and as PyTorch's conv2d returns for a
    channels_last input): `.reshape` works on it, `.view` may not; making it contiguous would
    cost a quarter of an int8 ResNet-20 forward."""
    if packed is None:
        packed = prepack(w, stride, padding, lo)
    xu = (x - lo if lo else x).to(dtype=torch.uint8, memory_format=torch.channels_last)
    o = w.shape[0]
    y = torch.ops.onednn.qconv_pointwise(
        xu, 1.0, -lo, packed, torch.ones(o) if scale is None else scale,
        torch.zeros(o, dtype=torch.int64), offset, [stride] * 2, [padding] * 2, [1, 1], 1, 1.0,
        0, torch.float32, "none", [], "")
    return y  # type: ignore[no-any-return]
