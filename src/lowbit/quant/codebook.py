"""Codebook quantizers: a fixed level family per tensor (powers of two, ternary, binary, sign),
recomputed from the input at every call.

Weight quantizers here use the identity STE (gradient passed unchanged to the float "latent"
weights); `sign` (1-bit activations) uses the Bi-Real gradient. The uniform-grid family
(uniform, scaleclip, lsq, dorefa) lives in `lowbit.quant.uniform`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from lowbit.quant import functional as F
from lowbit.quant import lbwfit
from lowbit.quant.base import Quantizer, check_bits, check_input
from lowbit.quant.registry import register_quantizer
from lowbit.quant.ste import sign_bireal, ste


class CodebookQuantizer(Quantizer):
    """A quantizer whose output is `decode(encode(x))`: integer codes times a scale.

    Subclasses implement `encode` and `code_range`; `forward`, `levels` follow.
    """

    ste_rule: ClassVar[str] = "identity"
    has_codebook: ClassVar[bool] = True
    per_channel: bool = False

    def code_range(self) -> Tensor:
        """Every integer code the quantizer may emit, ascending (1-d)."""
        raise NotImplementedError

    def levels(self, x: Tensor) -> Tensor:
        _, scale = self.encode(x)
        codes = self.code_range().to(x.device)
        if scale.dim() == 1:  # per channel: one row of levels per output channel
            codes = codes.expand(scale.shape[0], -1)
        return self.decode(codes, scale)

    def forward(self, x: Tensor) -> Tensor:
        return ste(x, self.decode(*self.encode(x)))


@register_quantizer
class Pow2(CodebookQuantizer):
    """INQ power-of-two weights (Zhou et al., ICLR 2017; spec §2.2).

    Forward: s = max|W|, n1 = floor(log2(4s/3)), n2 = n1 + 1 - 2^(b-2); each weight goes to the
    nearest level of {0, ±2^n2, ..., ±2^n1} in the linear domain (paper Eq. 4; exact midpoints
    go to the smaller magnitude as in the official code; |w| >= 1.5*2^n1 clamps to 2^n1).
    Backward: identity STE.
    Levels for `bits` b: 2^(b-1) + 1 (0 and 2^(b-2) signed magnitudes); b=2 is {-2^n1, 0, 2^n1}.
    Codes: c in {0, ±1..±2^(b-2)} means sign(c)*2^(n2-1+|c|); the scale is the top level 2^n1.
    An all-zero tensor has scale 0 and levels {0}. INQ's frozen-n1 variant: `F.pow2_quantize`.
    """

    name = "pow2"

    def __init__(self, bits: int = 5) -> None:
        super().__init__(bits)
        check_bits(self.name, bits, 2, 8)

    def code_range(self) -> Tensor:
        m = 2 ** (self.bits - 2)
        return torch.arange(-m, m + 1, dtype=torch.int32)

    def levels(self, x: Tensor) -> Tensor:
        _, scale = self.encode(x)
        return torch.zeros(1, dtype=x.dtype, device=x.device) if scale == 0 else super().levels(x)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x, "weight")
        return F.pow2_encode(x, self.bits)

    @property
    def linear_codes(self) -> bool:
        return False  # codes are signed exponents

    def decode(self, codes: Tensor, scale: Tensor) -> Tensor:
        return F.pow2_decode(codes, scale, 2 ** (self.bits - 2))


@register_quantizer
class Ternary(CodebookQuantizer):
    """Exact LBW ternary weights (Yin et al. 2016; spec §4.3): argmin ||W - alpha*Q||^2.

    Forward: sort |W| descending, S_k prefix sums, k* = argmax S_k^2/k, alpha = S_k*/k*,
    output alpha*sign(W) on the k* largest |W| (ties at the threshold are all kept, which is
    still optimal), 0 elsewhere. `per_channel` solves each output channel separately.
    Backward: identity STE.
    Levels: {-alpha, 0, alpha} (bits must be 2). Codes {-1, 0, 1}, scale alpha.
    """

    name = "ternary"

    def __init__(self, bits: int = 2, per_channel: bool = False) -> None:
        super().__init__(bits)
        check_bits(self.name, bits, 2, 2)
        self.per_channel = per_channel

    def code_range(self) -> Tensor:
        return torch.arange(-1, 2, dtype=torch.int32)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x, "weight")
        return F.ternary_exact(x, self.per_channel)


@register_quantizer
class TWN(Ternary):
    """Ternary Weight Networks (Li & Liu 2016; spec §8.4), the heuristic baseline.

    Forward: Delta = 0.7*mean|W|, Q = sign(W)*1[|W| > Delta], alpha = mean of |W| over Q != 0.
    Backward: identity STE. Levels {-alpha, 0, alpha} (bits 2). Codes {-1, 0, 1}, scale alpha.
    """

    name = "twn"

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x, "weight")
        return F.twn_ternary(x, self.per_channel)


@register_quantizer
class Binary(CodebookQuantizer):
    """Binary weights sign(W)*mean|W| (Group-Net Eq. 1; XNOR-Net with `per_channel`).

    Forward: E = mean|W| over the whole layer (default, as the official Group-Net code) or
    per output channel; output sign(W)*E with sign(0) = +1 so there are exactly two levels.
    Backward: identity STE (no clipping). Levels {-E, +E} (bits 1). Codes ±1, scale E (a
    packed file stores each code's index in the code range: one bit per weight).
    """

    name = "binary"

    def __init__(self, bits: int = 1, per_channel: bool = False) -> None:
        super().__init__(bits)
        check_bits(self.name, bits, 1, 1)
        self.per_channel = per_channel

    def code_range(self) -> Tensor:
        return torch.tensor([-1, 1], dtype=torch.int32)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x, "weight")
        return F.binary(x, self.per_channel)


@register_quantizer
class LBW(CodebookQuantizer):
    """LBW-Net power-of-two weights with a scale (Yin et al. 2016; spec §4.2, §4.4).

    Forward: alpha*Q minimising ||W - alpha*Q||^2 with Q_i in S_n = {0, ±1, ±2, ..., ±2^(n-1)},
    n = 2^(b-1) - 1 non-zero magnitudes (b=3: {1, 2, 4}; b=4: up to 64; b=8: up to 2^126),
    the sign-magnitude count of spec §4.2 (which marks n(b) unresolved: the paper may use
    fewer magnitudes; with this n, b >= 5 adds nothing over b = 4 on Gaussian weights).
    Derivation of the two exact half-steps: for fixed alpha the objective separates per
    weight, so Q_i is the level nearest W_i/alpha (midpoints: 1/2, then 1.5*2^j between 2^j
    and 2^(j+1), i.e. thresholds alpha/2 and 0.75*2^j*alpha); for fixed Q it is a quadratic in
    alpha, minimised at <W,Q>/<Q,Q>.
    `method`:
      - "alternating" (reference, default): the least-squares optimum over alpha and Q
        (`lowbit.quant.lbwfit`): one sort of |W| and its prefix sums score every candidate
        alpha in O(n log N); a log-spaced candidate search over the whole useful range of
        alpha, a fine search around the best candidates, then at most `iters` Lloyd steps
        (exact alternation of the two half-steps; stops once a step gains < 1e-6). Within
        0.5% of a dense search over alpha on Gaussian, Laplace and Student-t weights,
        b = 3..8, per tensor and per channel (tests/quant/test_lbw_fit.py); on N(0,1) weights
        0.047 relative squared error at b=3, 0.0374 for b >= 4. Cost on ResNet-20's 21 conv
        weights (one quantization of the whole model, 1 thread, medians of 7, on a shared
        2-core CPU at load ~6): per tensor b=4 62-70 ms vs 15 ms for "threshold" (4.2-4.7x),
        b=3 4.6-6.2x, b=6 4.3-5.4x; per channel b=4 6.7-8.3x, b=6 21-23x (many levels times
        many rows of candidates); about 4% of a 1-thread fp32 ResNet-20 training step at b=4.
      - "threshold": one free parameter `r`, top level 2^(n-1)*alpha = r*max|W|, then nearest
        level. This is NOT the paper's semi-analytical formula (unrecovered). Default r = 0.5
        minimised the mean error over b in {3, 4} and N in {2e3, 2e4, 2e5} Gaussian weights
        (b=3 prefers r ~ 0.4-0.6, b >= 4 is flat for r in 0.6-1.0); tune it on validation: on
        trained (heavy-tailed) ResNet-20 weights r = 1.0 wins clearly, and the LBW recipe uses it.
        Not idempotent unless r = 1 (re-quantizing rescales the top level by r).
    bits = 2 is the exact ternary solution for both methods.
    Backward: identity STE.
    Levels: alpha*S_n, 2n + 1 = 2^b - 1 values (per channel: one alpha per output channel).
    Codes: c in {0, ±1..±n} means sign(c)*2^(|c|-1)*alpha; the scale is the top 2^(n-1)*alpha.
    """

    name = "lbw"

    def __init__(self, bits: int = 3, method: str = "alternating", iters: int = 20,
                 r: float = 0.5, per_channel: bool = False) -> None:
        super().__init__(bits)
        check_bits(self.name, bits, 2, 8)
        if method not in ("alternating", "threshold"):
            raise ValueError(f"lbw method must be 'alternating' or 'threshold', got {method!r}")
        if iters < 0 or not 0 < r < math.inf:
            raise ValueError(f"lbw needs iters >= 0 and a finite r > 0, got iters={iters}, r={r}")
        self.method, self.iters, self.r, self.per_channel = method, iters, r, per_channel

    @property
    def num_magnitudes(self) -> int:
        return lbwfit.lbw_num_magnitudes(self.bits)

    def code_range(self) -> Tensor:
        n = self.num_magnitudes
        return torch.arange(-n, n + 1, dtype=torch.int32)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x, "weight")
        return lbwfit.lbw_fit(x, self.bits, self.method, self.iters, self.r, self.per_channel)

    @property
    def linear_codes(self) -> bool:
        return self.bits == 2  # ternary layout: code * alpha; above, sign * 2^k codes

    def decode(self, codes: Tensor, scale: Tensor) -> Tensor:
        if self.bits == 2:  # ternary layout: code * alpha
            return super().decode(codes, scale)
        return F.pow2_decode(codes, scale, self.num_magnitudes)


@register_quantizer
class Sign(CodebookQuantizer):
    """1-bit activations for Group-Net / Bi-Real (spec §5.2): sign(x), sign(0) = +1.

    Forward: +1 if x >= 0 else -1 (no scale). Backward: Bi-Real (2 - 2|x|)*1[|x| < 1].
    Levels {-1, +1} (bits 1). Codes ±1, scale 1.
    """

    name = "sign"

    def __init__(self, bits: int = 1) -> None:
        super().__init__(bits)
        if bits != 1:
            raise ValueError(f"sign supports bits 1, got {bits}")

    def code_range(self) -> Tensor:
        return torch.tensor([-1, 1], dtype=torch.int32)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x, "tensor")
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return F.sign_pm1(x.detach()).to(torch.int8), one

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "tensor")
        return sign_bireal(x)  # = ste_bireal(x, decode(encode(x))), fused
