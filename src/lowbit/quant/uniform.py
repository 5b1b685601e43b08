"""Uniform-grid quantizers: clip-based (`uniform`, `scaleclip`; weights with `signed=True`,
post-ReLU activations with `signed=False`), learned-step (`lsq`) and DoReFa weights.

Gradient convention: signed (weight) quantizers use the identity STE; unsigned (activation)
quantizers use the STE masked to the clip range [0, T]. Statistic-driven clips (EMA) update in
training mode and are frozen in eval mode; `encode`/`levels` read the current state without
changing it, so in training mode call them after `forward` to see what it used.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from lowbit.quant import functional as F
from lowbit.quant.base import check_bits, check_input, check_levels_fit
from lowbit.quant.codebook import CodebookQuantizer
from lowbit.quant.registry import register_quantizer
from lowbit.quant.stats import abs_max, flat
from lowbit.quant.ste import (
    fused_uniform_ste,
    grad_scale,
    round_ste,
    ste,
    ste_clipped,
    ste_pact,
)

_CLIPS = ("max", "fixed", "learned", "ema")


def _check_uniform_bits(name: str, bits: int, signed: bool) -> None:
    lo = 2 if signed else 1
    if not lo <= bits <= 16:
        raise ValueError(f"{name} with signed={signed} supports bits {lo}..16, got {bits}")


def _fuse(x: Tensor) -> bool:
    """Whether to take the fused eager kernel (`fused_uniform_ste`): on CPU, eagerly. It reads
    the clip on the host (its masks take Python-float bounds), which on a GPU would stall the
    queue five times per layer; there, and under torch.compile, the plain tensor ops run
    instead (the same values and gradients), which read no tensor value on the host."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


class _ClipQuantizer(CodebookQuantizer):
    """Shared code: uniform levels on [-T, T] or [0, T] given a clip T, plus an EMA buffer."""

    signed: bool
    momentum: float
    running_clip: Tensor
    num_batches_tracked: Tensor

    def _init_ema(self, momentum: float) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.register_buffer("running_clip", torch.zeros(()))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def _ema_clip(self, statistic: Callable[[], Tensor], x: Tensor, update: bool) -> Tensor:
        """EMA of a clip statistic of `x`: the first batch initialises it; eval mode only reads
        it. Before any training batch, eval mode uses the batch value without storing it.

        Branch-free on the buffers (torch.where), so torch.compile traces it in one graph;
        eager eval mode skips `statistic()` (a pass over the whole activation) once tracked.
        """
        tracked = self.num_batches_tracked > 0
        if not update and not torch.compiler.is_compiling() and bool(tracked):
            return self.running_clip.to(x.dtype)
        batch_value = statistic()
        if not update:
            return torch.where(tracked, self.running_clip.to(batch_value), batch_value)
        with torch.no_grad():
            b = batch_value.to(self.running_clip)
            ema = self.running_clip.lerp(b, 1 - self.momentum)
            self.running_clip.copy_(torch.where(tracked, ema, b))
            self.num_batches_tracked.add_(1)
        return self.running_clip.to(batch_value.dtype)

    def code_range(self) -> Tensor:
        big_l = F.uniform_num_steps(self.bits, self.signed)
        return torch.arange(-big_l if self.signed else 0, big_l + 1, dtype=torch.int32)

    def threshold(self, x: Tensor, update: bool = False) -> Tensor:
        """The clip threshold T used for `x` (0-d, or (C,) per output channel)."""
        raise NotImplementedError

    def _check(self, x: Tensor) -> None:
        """Metadata-only input checks, plus: every level must be exact in x's dtype."""
        check_input(x, "tensor")
        big_l = F.uniform_num_steps(self.bits, self.signed)
        check_levels_fit(x.dtype, big_l, f"{self.name} with bits={self.bits}")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        return F.uniform_encode(x, self.threshold(x), self.bits, self.signed)

    def step(self, x: Tensor) -> Tensor:
        """Quantization step Delta = T / L used for `x`: 0-d, or (C,) per output channel."""
        return self.encode(x)[1]

    def _output(self, x: Tensor, t: Tensor, q: Tensor, learned: bool) -> Tensor:
        """Attach the STE: PACT for learned clips, else identity (signed) / clipped (unsigned)."""
        tv = F.channel_view(t, x)
        if learned:
            return ste_pact(x, q, tv, self.signed, clip_input_grad=not self.signed)
        if self.signed:
            return ste(x, q)
        return ste_clipped(x, q, 0.0, tv)


_UNTRACKED = ("its EMA clip has seen no training batch (train, or run a few train-mode "
              "batches)")


@register_quantizer
class Uniform(_ClipQuantizer):
    """Uniform k-bit quantizer with a clip value T (spec §1.3; Group-Net Eq. 2; PACT).

    Forward: Delta = T/L; signed: L = 2^(b-1)-1, Q = Delta*round(clip(x, -T, T)/Delta), levels
    Delta*{-L..L} (b = 2 is ternary {-T, 0, T}); unsigned: L = 2^b - 1, levels Delta*{0..L} on
    [0, T]. `clip` chooses T: "max" (max|x|; unsigned: max(x, 0)), "fixed" (`clip_value`,
    e.g. Group-Net's beta = 1), "learned" (PACT: a parameter initialised to `clip_value`),
    "ema" (EMA of the max with `momentum`, frozen in eval).
    Backward: identity STE (signed), 1[0 <= x <= T] (unsigned); learned T gets PACT's
    1[x >= T] (minus 1[x <= -T] when signed).
    Codes: integers in [-L, L] or [0, L], scale Delta.
    """

    name = "uniform"

    def __init__(self, bits: int = 4, signed: bool = True, clip: str = "max",
                 clip_value: float = 1.0, momentum: float = 0.99) -> None:
        super().__init__(bits)
        _check_uniform_bits(self.name, bits, signed)
        if clip not in _CLIPS:
            raise ValueError(f"uniform clip must be one of {', '.join(_CLIPS)}, got {clip!r}")
        if clip in ("fixed", "learned") and not clip_value > 0:
            raise ValueError(f"uniform clip_value must be > 0, got {clip_value}")
        self.signed, self.clip, self.clip_value, self.momentum = signed, clip, clip_value, momentum
        if clip == "ema":
            self._init_ema(momentum)
        if clip == "learned":
            self.learned_clip = nn.Parameter(torch.tensor(float(clip_value)))

    def threshold(self, x: Tensor, update: bool = False) -> Tensor:
        if self.clip == "fixed":
            return torch.tensor(self.clip_value, dtype=x.dtype, device=x.device)
        if self.clip == "learned":  # abs: a clip driven negative by training acts as |clip|
            return self.learned_clip.abs().to(x.dtype)

        def batch_max() -> Tensor:
            if self.signed:  # max |x| without materialising |x|, in x's dtype
                return abs_max(x)
            return flat(x.detach()).amax().clamp_min(0)

        if self.clip == "max":
            return batch_max()
        return self._ema_clip(batch_max, x, update)

    def frozen_clip(self, dtype: torch.dtype = torch.float32) -> Tensor:
        if self.clip == "max":
            raise ValueError("its clip is the max of each batch (use clip 'ema', 'fixed' or "
                             "'learned')")
        if self.clip == "ema" and int(self.num_batches_tracked) == 0:
            raise ValueError(_UNTRACKED)
        return self.threshold(torch.ones((), dtype=dtype), update=False).detach()

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        t = self.threshold(x, update=self.training)
        if t.dim() == 0 and _fuse(x):  # per tensor: one fused node (same values and gradients)
            big_l = F.uniform_num_steps(self.bits, self.signed)
            return fused_uniform_ste(x, t, big_l, self.signed, clip_input_grad=not self.signed)
        q = self.decode(*F.uniform_encode(x, t, self.bits, self.signed))
        return self._output(x, t, q, learned=self.clip == "learned")


@register_quantizer
class ScaleClip(LazyModuleMixin, _ClipQuantizer):
    """GDRQ Scale-Clip + (group-wise) uniform quantization (Yu et al., CVPRW 2020; spec §3.3-3.5).

    Forward: T = k * stat(x), stat = mean|x| ("mean", default), std ("std") or max|x| ("max",
    with k = 1: no clipping, the "without Scale-Clip" ablation); weights
    (`signed=True`, default k = 2) recompute T at every call, per block of `group_size`
    consecutive output channels (None or 0: one T per layer); activations (`signed=False`,
    default k = 3) use an EMA of k*stat(batch) (`momentum` 0.99, first batch initialises,
    frozen in eval, buffer `running_clip`). `learnable=True` replaces the statistic by a
    per-group parameter `log_threshold` (T = exp(.)) initialised from it on first use.
    Then uniform quantization on [-T, T] (Delta = T/(2^(b-1)-1); W2 = ternary) or [0, T]
    (Delta = T/(2^b-1)). `quantize=False` only clips (stage-1 distribution reshaping); `mix`
    (an attribute, 1 by default) in training blends the two, clip(x) + mix * (Q(x) - clip(x)),
    for a gradual switch-on (`GDRQRecipe`'s `ramp_steps`); evaluation is always quantized.
    Backward: identity STE for weights, 1[0 <= x <= T] for activations; a learnable T gets
    PACT's gradient. Levels: Delta*{-L..L} or Delta*{0..L}; per group for weights (rows per
    output channel, shape (C, 2L+1)). `step(x)` gives Delta per output channel, for BN folding.
    """

    name = "scaleclip"
    cls_to_become = None

    def __init__(self, bits: int = 2, signed: bool = True, k: float | None = None,
                 stat: str = "mean", group_size: int | None = None, momentum: float = 0.99,
                 learnable: bool = False, quantize: bool = True) -> None:
        super().__init__(bits)
        _check_uniform_bits(self.name, bits, signed)
        if stat not in ("mean", "std", "max"):
            raise ValueError(f"scaleclip stat must be 'mean', 'std' or 'max', got {stat!r}")
        if group_size and (not signed or group_size < 0):
            raise ValueError("scaleclip group_size needs signed=True (weights) and a size > 0")
        if k is not None and not k > 0:
            raise ValueError(f"scaleclip k must be > 0, got {k}")
        self.signed, self.k, self.stat, self.group_size = signed, k, stat, group_size
        self.momentum, self.learnable, self.quantize = momentum, learnable, quantize
        self.mix = 1.0
        self.clip_k = k if k is not None else (2.0 if signed else 3.0)
        if not signed:
            self._init_ema(momentum)
        if learnable:
            self.log_threshold = nn.UninitializedParameter()

    def _statistic(self, x: Tensor) -> Tensor:
        return F.scale_clip_threshold(x, self.clip_k, self.stat, self.group_size)

    def initialize_parameters(self, x: Tensor) -> None:  # type: ignore[override]
        """Materialise `log_threshold` from the statistic of the first input (learnable only)."""
        if self.learnable and self.has_uninitialized_params():
            check_input(x, "tensor")  # runs from a pre-forward hook, before forward's check
            t = self._statistic(x)
            per_group = t[:: self.group_size] if self.group_size else t
            self.log_threshold.materialize(per_group.shape, dtype=x.dtype, device=x.device)
            with torch.no_grad():
                floor = torch.finfo(x.dtype).tiny  # log(0) would be -inf for all-zero input
                self.log_threshold.copy_(per_group.clamp_min(floor).log())

    def threshold(self, x: Tensor, update: bool = False) -> Tensor:
        if self.learnable:
            self.initialize_parameters(x)
            t = self.log_threshold.exp()
            return t.repeat_interleave(self.group_size) if self.group_size else t
        if self.signed:
            return self._statistic(x)
        return self._ema_clip(lambda: self._statistic(x), x, update)

    def levels(self, x: Tensor) -> Tensor:
        if not self.quantize:
            raise ValueError("scaleclip with quantize=False only clips: it has no levels")
        return super().levels(x)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.quantize:
            raise ValueError("scaleclip with quantize=False only clips: it has no codes")
        return super().encode(x)

    @property
    def enabled(self) -> bool:
        return self.quantize

    def set_enabled(self, flag: bool) -> None:
        self.quantize = flag

    def frozen_clip(self, dtype: torch.dtype = torch.float32) -> Tensor:
        if not self.quantize:
            raise ValueError("it is in the clip-only (reshaping) stage")
        if self.learnable and self.has_uninitialized_params():
            raise ValueError("its clip was never initialised")
        if self.signed and not self.learnable:
            raise ValueError("a signed Scale-Clip recomputes its clip from every batch")
        if not self.learnable and int(self.num_batches_tracked) == 0:
            raise ValueError(_UNTRACKED)
        return self.threshold(torch.ones((), dtype=dtype), update=False).detach()

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        t = self.threshold(x, update=self.training)
        out = self._clip_or_quantize(x, t, self.quantize)
        if self.quantize and self.training and self.mix < 1.0:  # gradual switch-on
            out = torch.lerp(self._clip_or_quantize(x, t, False), out, self.mix)
        return out

    def _clip_or_quantize(self, x: Tensor, t: Tensor, quantize: bool) -> Tensor:
        if quantize and t.dim() == 0 and _fuse(x):  # one T (act., per-layer weights): fused
            big_l = F.uniform_num_steps(self.bits, self.signed)
            return fused_uniform_ste(x, t, big_l, self.signed, clip_input_grad=not self.signed)
        tv = F.channel_view(t.detach(), x)
        if quantize:
            q = self.decode(*F.uniform_encode(x, t, self.bits, self.signed))
        else:
            q = torch.minimum(torch.maximum(x.detach(), -tv if self.signed else 0 * tv), tv)
        return self._output(x, t, q, learned=self.learnable)


@register_quantizer
class LSQ(CodebookQuantizer):
    """Learned Step Size Quantization (Esser et al., ICLR 2020; spec §8.3).

    Forward: x_q = s * round(clip(x/s, -Q_N, Q_P)); signed: Q_N = 2^(b-1), Q_P = 2^(b-1)-1;
    unsigned: Q_N = 0, Q_P = 2^b - 1. The step `step` (a parameter) is initialised on the first
    call to 2*mean|x|/sqrt(Q_P).
    Backward: d/dx = 1[-Q_N <= x/s <= Q_P]; d/ds = (-x/s + round(x/s)) inside, -Q_N or Q_P
    outside, times g = 1/sqrt(N*Q_P) with N = numel(x) for signed (weight) quantizers and
    numel(x)/batch for unsigned (activation) ones.
    Levels s*{-Q_N..Q_P} (2^b values). Codes: those integers, scale s.
    """

    name = "lsq"
    initialized: Tensor

    def __init__(self, bits: int = 4, signed: bool = True) -> None:
        super().__init__(bits)
        _check_uniform_bits(self.name, bits, signed)
        self.signed = signed
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready = False  # host mirror of `initialized`: forward never reads the buffer
        self.register_load_state_dict_post_hook(_sync_ready)

    def code_range(self) -> Tensor:
        qn, qp = F.lsq_bounds(self.bits, self.signed)
        return torch.arange(-qn, qp + 1, dtype=torch.int32)

    def _step(self, x: Tensor) -> Tensor:
        """Current step (positive, at least the smallest normal of both dtypes); initialises it
        from `x` on first use."""
        if not self._ready:
            with torch.no_grad():
                init = F.lsq_init_step(x, self.bits, self.signed).to(self.step)
                self.step.copy_(init.clamp_min(torch.finfo(self.step.dtype).tiny))
                self.initialized.fill_(True)
            self._ready = True
        return self.step.abs().to(x.dtype).clamp_min(torch.finfo(x.dtype).tiny)

    def _check(self, x: Tensor) -> None:
        check_input(x, "tensor")
        qn, qp = F.lsq_bounds(self.bits, self.signed)
        check_levels_fit(x.dtype, max(qn, qp), f"lsq with bits={self.bits}")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        s = self._step(x).detach()
        qn, qp = F.lsq_bounds(self.bits, self.signed)
        codes = torch.round(torch.clamp(x.detach() / s, -qn, qp))
        return codes.to(F.code_dtype(max(qn, qp))), s

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        qn, qp = F.lsq_bounds(self.bits, self.signed)
        n = x.numel() if self.signed or x.dim() < 2 else x[0].numel()
        s = grad_scale(self._step(x), 1.0 / math.sqrt(n * qp))
        return round_ste(torch.clamp(x / s, -qn, qp)) * s


def _sync_ready(module: nn.Module, incompatible_keys: object) -> None:
    """After load_state_dict: LSQ's host flag follows the loaded `initialized` buffer."""
    module._ready = bool(module.initialized)  # type: ignore[assignment]


@register_quantizer
class DoReFa(CodebookQuantizer):
    """DoReFa-Net weights (Zhou et al. 2016; spec §8.1).

    Forward (b >= 2): v = tanh(W)/max|tanh(W)|, output 2*quantize_b((v+1)/2) - 1 with
    quantize_b(u) = round((2^b-1)u)/(2^b-1): 2^b levels (2i - (2^b-1))/(2^b-1), symmetric,
    without 0 (an exact 0 lands on ±1/(2^b-1) by round-half-to-even; so this quantizer does not
    keep signs of near-zero weights). b = 1: sign(W)*mean|W| (sign(0) = +1).
    Backward: identity STE to v, then the true gradient of the tanh normalisation (b >= 2);
    identity for b = 1.
    Codes: odd integers in [-(2^b-1), 2^b-1], scale 1/(2^b-1) (b = 1: ±1, scale mean|W|).
    DoReFa activations are `uniform` with signed=False, clip="fixed", clip_value=1.
    """

    name = "dorefa"

    def __init__(self, bits: int = 2) -> None:
        super().__init__(bits)
        check_bits(self.name, bits, 1, 8)

    def code_range(self) -> Tensor:
        if self.bits == 1:
            return torch.tensor([-1, 1], dtype=torch.int32)
        n = 2**self.bits - 1
        return torch.arange(-n, n + 1, 2, dtype=torch.int32)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x, "weight")
        if self.bits == 1:
            return F.binary(x)
        return F.dorefa_encode(F.dorefa_normalize(x.detach()), self.bits)

    def forward(self, x: Tensor) -> Tensor:
        if self.bits == 1:
            return super().forward(x)
        check_input(x, "weight")
        v = F.dorefa_normalize(x)
        return ste(v, self.decode(*F.dorefa_encode(v, self.bits)))
