"""INQ's partially frozen power-of-two weights (Zhou et al., ICLR 2017; spec §2.2-2.6).

The quantizer holds, per layer, a boolean `mask` of frozen (already quantized) weights and their
`frozen` power-of-two values. Forward: `where(mask, frozen, W)`, so frozen entries are exactly
their quantized values whatever happens to the latent `W` (weight decay, momentum), and the
gradient reaches only the still-float entries (the `where` passes none to frozen positions;
INQ Eq. 7). `partition(W, fraction)` freezes the next group (largest |W| first, or random) so
exactly round(fraction * N) weights are frozen, quantized with paper Eq. 4 to
{0, ±2^n2, ..., ±2^n1}, n2 = n1 + 1 - 2^(b-2). `prune(W, sparsity)` freezes the smallest
weights at 0 first (DNS + INQ); fractions then count the remaining non-zero weights.

n1 = floor(log2(4·max|W|/3)) over the layer's current weights (frozen and float). `n1_mode`:
  - "per_step" (default, as the official code): recomputed at every partition step. A new n1
    whose level window {2^n2..2^n1} would leave out an already-frozen value is refused and the
    previous one kept (logged), so frozen weights never leave the codebook and the finished
    layer is exactly b bits. With the magnitude partition the largest weights are frozen first,
    so n1 moves only if a float weight outgrows 1.5·2^n1 during retraining.
  - "first": computed once, at the first partition, and kept.
Float weights above 1.5·2^n1 clamp to 2^n1 (spec §2.2 [R]).

`n1_rule` says how n1 is computed from the weights (option; the paper's rule is the default):
  - "max" (paper Eq. 3): from max|W|, as above. At 2-3 bits this puts the smallest non-zero
    level so high that most weights round to 0 (ResNet-20's inner convs: 83 % zeros at 3 bits,
    98 % at 2 bits), which the retraining cannot recover at CIFAR scale.
  - "mse": the n1 in [n1_max - 6, n1_max] whose quantization of the layer's current weights has
    the least squared error (ties to the larger n1). The codebook stays {0, ±2^n2..±2^n1}
    (no free scale: BatchNorm after the conv absorbs it); only where it sits changes.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from lowbit.quant import functional as F
from lowbit.quant.base import check_input
from lowbit.quant.codebook import Pow2
from lowbit.quant.registry import register_quantizer

log = logging.getLogger(__name__)
N1_MODES = ("per_step", "first")
N1_RULES = ("max", "mse")
MSE_SEARCH = 6  # exponents below the max-rule n1 that the "mse" rule tries


@register_quantizer
class INQWeight(Pow2):
    """INQ weights: frozen power-of-two entries plus still-float ones (see module docstring).

    Forward: where(mask, frozen, W). Backward: gradient 1 at float entries, 0 at frozen ones.
    Levels (once fully frozen): {0, ±2^n2..±2^n1}, 2^(b-1)+1 values for `bits` b, as `pow2`.
    """

    name = "inq"
    mask: Tensor
    frozen: Tensor
    n1: Tensor
    has_n1: Tensor
    num_pruned: Tensor

    def __init__(self, bits: int = 5, strategy: str = "magnitude",
                 n1_mode: str = "per_step", n1_rule: str = "max") -> None:
        super().__init__(bits)
        if strategy not in ("magnitude", "random"):
            raise ValueError(f"strategy must be 'magnitude' or 'random', got {strategy!r}")
        if n1_mode not in N1_MODES:
            raise ValueError(f"n1_mode must be 'per_step' or 'first', got {n1_mode!r}")
        if n1_rule not in N1_RULES:
            raise ValueError(f"n1_rule must be 'max' or 'mse', got {n1_rule!r}")
        self.strategy, self.n1_mode, self.n1_rule = strategy, n1_mode, n1_rule
        self.register_buffer("mask", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("frozen", torch.zeros(0))
        self.register_buffer("n1", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("has_n1", torch.tensor(False))
        self.register_buffer("num_pruned", torch.tensor(0, dtype=torch.int64))

    def attach(self, w: Tensor) -> None:
        """Size the buffers for weight `w` (nothing frozen yet); no-op when already sized."""
        if self.mask.shape != w.shape:
            self.mask = torch.zeros_like(w, dtype=torch.bool)
            self.frozen = torch.zeros_like(w)

    @property
    def frozen_fraction(self) -> float:
        return float(self.mask.float().mean()) if self.mask.numel() else 0.0

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "weight", allow_empty=True)  # a zero-size layer passes through
        if self.mask.shape != x.shape:
            return x  # nothing frozen yet
        return torch.where(self.mask, self.frozen.to(x.dtype), x)

    @torch.no_grad()
    def prune(self, w: Tensor, sparsity: float) -> int:
        """Freeze the round(sparsity·N) smallest |w| at 0; must precede any partition."""
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        self.attach(w)
        if self.mask.any():
            raise ValueError("prune before the first INQ partition")
        k = round(sparsity * w.numel())
        order = torch.sort(w.abs().reshape(-1), stable=True).indices[:k]
        self._freeze(order, torch.zeros(k, dtype=self.frozen.dtype, device=self.frozen.device))
        self.num_pruned.fill_(k)
        return k

    @torch.no_grad()
    def partition(
        self, w: Tensor, fraction: float, generator: torch.Generator | None = None
    ) -> int:
        """Freeze and quantize weights until round(fraction·N') are frozen (N' = N - pruned).

        Returns how many weights were newly frozen.
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        check_input(w, "weight", allow_empty=True)
        self.attach(w)
        if w.numel() == 0:
            return 0  # a zero-size layer has nothing to freeze
        eff = self.forward(w)
        if not bool(self.has_n1) or self.n1_mode == "per_step":
            self._update_n1(eff)
        pruned = int(self.num_pruned)
        target = pruned + round(fraction * (w.numel() - pruned))
        k = target - int(self.mask.sum())
        if k <= 0:
            return 0
        new = self._choose(eff, k, generator)
        values = F.pow2_quantize(eff.reshape(-1)[new], self.bits, int(self.n1))
        self._freeze(new, values.to(self.frozen.dtype))
        return k

    def _target_n1(self, eff: Tensor) -> int:
        """n1 for the current effective weights, by `n1_rule` (see the module docstring)."""
        top = float(eff.abs().max())
        n1 = F.pow2_top_exponent(top) if top > 0 else 0
        if self.n1_rule == "max" or top == 0:
            return n1
        flat = eff.detach().reshape(-1).to(torch.float64)
        errors = [(float((F.pow2_quantize(flat, self.bits, c) - flat).square().sum()), -c)
                  for c in range(n1 - MSE_SEARCH, n1 + 1)]
        return -min(errors)[1]

    def _update_n1(self, eff: Tensor) -> None:
        """Set n1 by `n1_rule`, unless its window would exclude an already-frozen value."""
        n1 = self._target_n1(eff)
        if not bool(self.has_n1):
            self.n1.fill_(n1)
            self.has_n1.fill_(True)
            return
        if n1 == int(self.n1):
            return
        frozen = self.frozen[self.mask & (self.frozen != 0)].abs().to(torch.float64)
        n2 = n1 + 1 - 2 ** (self.bits - 2)
        if frozen.numel() and (frozen.min() < 2.0**n2 or frozen.max() > 2.0**n1):
            log.info("INQ: kept n1=%d (recomputed %d would drop frozen levels)", int(self.n1), n1)
            return
        self.n1.fill_(n1)

    def _freeze(self, flat_index: Tensor, values: Tensor) -> None:
        """Freeze the entries at row-major `flat_index` to `values`, whatever the buffers' memory
        format (a channels_last model has channels_last buffers, which `view(-1)` cannot take)."""
        index = torch.unravel_index(flat_index, self.mask.shape)
        self.frozen.index_put_(index, values)
        self.mask.index_put_(index, torch.ones_like(values, dtype=torch.bool))

    def _choose(self, eff: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
        free = (~self.mask).reshape(-1).nonzero().squeeze(1)
        if self.strategy == "random":
            return free[torch.randperm(len(free), generator=generator)[:k]]
        # largest |w| first; a stable sort makes ties (and so the exact count) deterministic
        order = torch.sort(eff.reshape(-1)[free].abs(), descending=True, stable=True).indices
        return free[order[:k]]

    @torch.no_grad()
    def restore(self, w: Tensor) -> None:
        """Write the frozen values into the latent weight (undoes optimizer drift)."""
        if self.mask.shape == w.shape:
            w.copy_(torch.where(self.mask, self.frozen.to(w.dtype), w))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x, "weight", allow_empty=True)
        if self.mask.shape != x.shape or not bool(self.mask.all()):
            raise ValueError("INQ weights are not fully quantized yet (run every partition step)")
        return F.pow2_encode(self.frozen.to(x.dtype), self.bits, int(self.n1))

    def levels(self, x: Tensor) -> Tensor:
        if not bool(self.has_n1):
            return torch.zeros(1, dtype=x.dtype, device=x.device)
        top = torch.tensor(2.0 ** int(self.n1), dtype=x.dtype, device=x.device)
        return self.decode(self.code_range().to(x.device), top)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "bits": self.bits, "strategy": self.strategy,
                "n1_mode": self.n1_mode, "n1_rule": self.n1_rule}
