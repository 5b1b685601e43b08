"""Group-Net's layers: a binary conv that keeps XNOR inference exact, and K-branch sums.

`BinaryConv2d` is a `QuantConv2d` with two options for 1-bit activations (Zhuang et al. 2018,
Sec. 3.1; spec §5.2):

- `pad_value`: pad the *quantized* input with this constant (e.g. +1, as the official Group-Net
  code, or -1) instead of zeros. Zero is not a binary value, so a zero-padded ±1 input would
  need a third state at the border and XNOR-popcount inference would not be exact. None keeps
  the conv's own padding (right for k-bit activations, whose grid [0, beta] contains 0).
- `act_scale`: XNOR-Net's activation scale: the output is multiplied by
  K = avg_pool(mean_c |x|) over the conv's window, stride and (zero) padding, computed from
  the float input x (Rastegari et al. 2016), held constant in backward. The input itself
  stays exactly ±1.

`BranchSum` is Eqs. 3, 5 and 6 in one module: `y = sum_i lambda_i * branch_i(x)` over K
branches with learned scalars lambda (`scales`). A branch is one quantized conv (layer-wise,
Eq. 3) or a quantized copy of a chain of blocks (group-wise, Eqs. 5-6). With `gated=True` it is
the authors' later variant with learned soft connections between groups (CVPR'19,
"Group-Net**"): base i of this group reads `s * y_prev_i + (1 - s) * x`, s = sigmoid(theta), where
`y_prev_i` is base i's output in the previous `BranchSum` (`link()`) and x the aggregate that
reached this group. The gate is used only when x is that aggregate itself (adjacent groups);
otherwise every base reads x, as without gates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.nn.layers import QuantConv2d, _check_float_type
from lowbit.quant.base import Quantizer


class BinaryConv2d(QuantConv2d):
    """`QuantConv2d` + binary-friendly padding and XNOR activation scales (see module doc).

    Forward: `y = conv(pad(act_quant(x), pad_value), weight_quant(W))`, times K if `act_scale`.
    State dict: exactly the `QuantConv2d` keys (the options are constructor arguments).
    """

    def __init__(self, *args: Any, pad_value: float | None = None, act_scale: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pad_value, self.act_scale = pad_value, act_scale

    def explicit_pad(self) -> tuple[int, int, int, int] | None:
        """(left, right, top, bottom) when `pad_value` replaces the conv's zero padding."""
        if self.pad_value is None or isinstance(self.padding, str) or self.padding_mode != "zeros":
            return None
        ph, pw = self.padding
        return (pw, pw, ph, ph) if ph or pw else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, w = self._quant_input(x), self._quant_weight()
        pad = self.explicit_pad()
        if pad is None:
            out = self._conv_forward(xq, w, self.bias)
        else:
            out = F.conv2d(F.pad(xq, pad, value=float(self.pad_value or 0.0)), w, self.bias,
                           self.stride, 0, self.dilation, self.groups)
        return out * self._xnor_scale(x) if self.act_scale else out

    @torch.no_grad()
    def _xnor_scale(self, x: torch.Tensor) -> torch.Tensor:
        """K of `xnor_scale` over this conv's window (see `scale_window`).

        A constant in backward (no gradient through K): the sign's Bi-Real gradient carries
        the signal, and differentiating K would double the cost of the layer on CPU.
        """
        return xnor_scale(x, *self.scale_window())

    def scale_window(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...] | int]:
        """(kernel size, stride, zero padding) of the average pool that computes K."""
        padding = 0 if isinstance(self.padding, str) else self.padding
        return self.kernel_size, self.stride, padding

    @classmethod
    def from_float(cls, module: nn.Conv2d, weight_quant: Quantizer | None = None,
                   act_quant: Quantizer | None = None, *, pad_value: float | None = None,
                   act_scale: bool | None = None) -> BinaryConv2d:
        """A BinaryConv2d sharing `module`'s Parameters. `module` is an `nn.Conv2d`, or a
        BinaryConv2d whose options are kept unless given (what `dequantize_model` relies on)."""
        if isinstance(module, BinaryConv2d):
            pad_value = module.pad_value if pad_value is None else pad_value
            act_scale = module.act_scale if act_scale is None else act_scale
        else:
            _check_float_type(module, nn.Conv2d, cls.__name__)
        new = cls(module.in_channels, module.out_channels, module.kernel_size,  # type: ignore[arg-type]
                  module.stride, module.padding, module.dilation,  # type: ignore[arg-type]
                  module.groups, module.bias is not None, module.padding_mode, device="meta",
                  dtype=module.weight.dtype, weight_quant=weight_quant, act_quant=act_quant,
                  pad_value=pad_value, act_scale=bool(act_scale))
        new.weight, new.bias = module.weight, module.bias
        return new.to(module.weight.device).train(module.training)

    def to_float(self, latent: bool = False) -> BinaryConv2d:  # type: ignore[override]
        """The quantized (or, if `latent`, float) weight baked into a BinaryConv2d without
        quantizers, keeping `pad_value` and `act_scale` so outputs do not change."""
        weight, bias = self._float_params(latent)
        new = BinaryConv2d.from_float(self, None, None)
        new.register_parameter("weight", weight)
        new.register_parameter("bias", bias)
        return new

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad_value={self.pad_value}, act_scale={self.act_scale}"


def xnor_scale(x: torch.Tensor, kernel_size: tuple[int, ...], stride: tuple[int, ...],
               padding: tuple[int, ...] | int) -> torch.Tensor:
    """XNOR-Net's activation scale K = avg_pool(mean_c |x|) over a conv's window, stride and
    zero padding (padded positions count, as `F.avg_pool2d` does by default)."""
    # abs().sum(): 7-16x faster on CPU than linalg.vector_norm(x, 1, dim=1), which reduces over
    # the channel dimension with a slow generic kernel; |x| is only a transient (the conv keeps x
    # for its backward anyway). In x's dtype (under autocast the sum may come out float32).
    a = (x.abs().sum(dim=1, keepdim=True) / x.shape[1]).to(x.dtype)
    return F.avg_pool2d(a, kernel_size, stride, padding)  # type: ignore[arg-type]


class BranchSum(nn.Module):
    """`y = sum_i scales[i] * branches[i](x)` (Group-Net Eqs. 3, 5, 6), optionally gated.

    Args:
        branches: the K branches (quantized convs, or quantized copies of a group of blocks).
        scales: initial lambda values, K of them (learned).
        gated: learn one soft-gate logit `theta` (init 0: s = 0.5) mixing each base's input from
            the previous BranchSum's base output and the aggregate (see module doc).
    """

    def __init__(self, branches: Sequence[nn.Module], scales: Sequence[float],
                 gated: bool = False) -> None:
        super().__init__()
        if len(branches) < 1 or len(scales) != len(branches):
            raise ValueError(f"BranchSum needs K >= 1 branches and K scales, got "
                             f"{len(branches)} and {len(scales)}")
        self.branches = nn.ModuleList(branches)
        self.scales = nn.Parameter(torch.tensor([float(s) for s in scales]))
        self.gate = nn.Parameter(torch.zeros(())) if gated else None
        self._prev: list[BranchSum] = []  # a plain list: the link is not a submodule
        self._last = _LastCall()

    @property
    def num_branches(self) -> int:
        """K."""
        return len(self.branches)

    @property
    def previous(self) -> BranchSum | None:
        """The BranchSum whose base outputs gate this one's inputs (`link`), or None."""
        return self._prev[0] if self._prev else None

    def link(self, previous: BranchSum) -> None:
        """Take gated inputs from `previous` (the group that runs just before this one)."""
        self._prev[:] = [previous]
        previous._last.keep = self.gate is not None

    def _inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        prev = self._prev[0]._last if self._prev and self.gate is not None else None
        if prev is None or prev.aggregate is not x or len(prev.outputs) != self.num_branches:
            return [x] * self.num_branches
        s = torch.sigmoid(self.gate)  # type: ignore[arg-type]
        return [s * y + (1 - s) * x for y in prev.outputs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(inp) for b, inp in zip(self.branches, self._inputs(x), strict=True)]
        scales = self.scales.to(outs[0].dtype)
        y = outs[0] * scales[0]
        for i in range(1, len(outs)):
            y = y + outs[i] * scales[i]
        if self._last.keep:
            self._last.outputs, self._last.aggregate = outs, y
        return y

    def aggregation_macs(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """Float multiply-accumulates of the aggregation per call: K per output element, plus
        two per input element and branch for the gates when they were used."""
        gated = self.gate is not None and self._prev and self._prev[0]._last.aggregate is x
        return self.num_branches * (y.numel() + (2 * x.numel() if gated else 0))

    def extra_repr(self) -> str:
        return f"K={self.num_branches}, gated={self.gate is not None}"


class _LastCall:
    """The branch outputs and aggregate of the last forward, kept only when a gated successor
    reads them. Never copied (a deep copy of a model starts empty) and never saved."""

    def __init__(self) -> None:
        self.keep = False
        self.outputs: list[torch.Tensor] = []
        self.aggregate: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _LastCall:
        new = _LastCall()
        new.keep = self.keep
        return new
