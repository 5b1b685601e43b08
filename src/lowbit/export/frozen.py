"""`Decoded`: the weight quantizer of a model loaded from a packed file.

A packed `.lowbit` file stores each quantized weight as integer codes and a scale, exactly what
`weight_quant.encode(W)` returned. Re-running the original quantizer on the decoded weights
would not give them back for every method (Scale-Clip recomputes its clip from the weights it is
given: Q(Q(W)) != Q(W)), so a loaded layer's quantizer is replaced by `Decoded`, which holds the
stored codes and scale and always outputs `decode(codes, scale)`, the quantized weights of the
model that was exported. It keeps the original quantizer (not as a submodule: it holds no state
that matters) for `bits`, the code layout, `decode` and `to_config`, so cost accounting, codebook
compliance and a second export (`lowbit export` of a `.lowbit` file) see the same codebook.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lowbit.quant.base import Quantizer


class Decoded(Quantizer):
    """Frozen integer codes and scale of one weight; `forward(w)` ignores `w`'s values.

    Args:
        inner: the quantizer that produced the codes (its `decode`/`code_range` are used).
        codes: integer codes, shaped like the weight.
        scale: the scale `inner.encode` returned (any shape `inner.decode` accepts).
    """

    name = "decoded"
    inner: Quantizer
    has_codebook = True  # its source's codes
    codes: Tensor
    scale: Tensor

    def __init__(self, inner: Quantizer, codes: Tensor, scale: Tensor) -> None:
        super().__init__(inner.bits)
        object.__setattr__(self, "inner", inner)  # not a submodule: its state is not needed
        self.per_channel = bool(getattr(inner, "per_channel", False))
        self.register_buffer("codes", codes.clone())
        self.register_buffer("scale", scale.clone())

    def code_range(self) -> Tensor:
        """The original quantizer's code range (every code it may emit, ascending)."""
        return self.inner.code_range()  # type: ignore[no-any-return,operator]

    @property
    def linear_codes(self) -> bool:
        return self.inner.linear_codes

    def decode(self, codes: Tensor, scale: Tensor) -> Tensor:
        return self.inner.decode(codes, scale)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape != self.codes.shape:
            raise ValueError(f"decoded weights have shape {tuple(self.codes.shape)}, "
                             f"got a tensor of shape {tuple(x.shape)}")
        return self.codes, self.scale

    def levels(self, x: Tensor) -> Tensor:
        codes = self.code_range().to(self.scale.device)
        if self.scale.dim() == 1 and self.scale.numel() > 1:  # one row of levels per channel
            codes = codes.expand(self.scale.shape[0], -1)
        return self.decode(codes, self.scale).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(*self.encode(x)).to(x.dtype)

    def to_config(self) -> dict[str, Any]:
        """The original quantizer's config: the codes came from it."""
        return self.inner.to_config()

    def extra_repr(self) -> str:
        return f"{self.inner.extra_repr()}, codes={tuple(self.codes.shape)}"

