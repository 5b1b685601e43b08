"""Multiple-choice knapsack: one bit-width per layer, least total sensitivity under a size budget.

minimise  sum_l s[l][b_l]   subject to   sum_l c[l][b_l] <= capacity (bits),  b_l in choices

c[l][b] is the stored bits of layer l at b bits: n_l * b plus its scales (`lowbit.study.size.
layer_bits`), which need not grow with b (per-channel ternary on a depthwise conv stores more
than one-scale 4-bit weights).

Solved exactly by dynamic programming over the capacity, in units of the greatest common
divisor of all item costs (no rounding). When that grid would exceed `max_cells`, costs are
rounded up and the capacity down to a coarser unit: the answer then still fits the budget but
may be slightly suboptimal, and `exact` says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


def monotone_in_bits(sensitivity: Mapping[str, Mapping[int, float]]) -> dict[str, dict[int, float]]:
    """Each layer's sensitivities made non-increasing in bits: s'[b] = min(s[c] for c <= b).

    More bits never need to hurt more than fewer (a measured increase at more bits is noise),
    so a layer is never pushed to fewer bits than the budget allows by measurement noise; the
    DP breaks ties toward the fuller use of the budget.
    """
    out = {}
    for name, per in sensitivity.items():
        ordered = sorted(per)
        out[name] = {b: min(float(per[c]) for c in ordered if c <= b)
                     for b in sorted(per, reverse=True)}
    return out


@dataclass(frozen=True)
class KnapsackResult:
    """The chosen bits per layer, their summed sensitivity and weight bits, and exactness."""

    bits: dict[str, int]
    cost: float
    used_bits: int
    exact: bool


def solve_knapsack(
    costs: Mapping[str, Mapping[int, int]],
    sensitivity: Mapping[str, Mapping[int, float]],
    capacity_bits: int,
    max_cells: int = 4_000_000,
) -> KnapsackResult:
    """Choose bits per layer (keys of `sensitivity[layer]`) minimising summed sensitivity.

    Args:
        costs: per layer, {bits: stored bits at that bit-width}.
        sensitivity: per layer, {bits: loss increase}; the layer's choices are its keys.
        capacity_bits: the budget for these layers' weights, in bits.
        max_cells: largest DP grid (capacity in units) before coarsening.

    Raises:
        ValueError: not even the smallest bits of every layer fit the capacity.
    """
    costs = {n: {b: int(costs[n][b]) for b in sensitivity[n]} for n in costs}
    smallest = sum(min(c.values()) for c in costs.values())
    if smallest > capacity_bits:
        raise ValueError(f"the budget ({capacity_bits:,} bits) cannot hold even the smallest "
                         f"bits of every layer ({smallest:,} bits)")
    unit = math.gcd(*(c for per in costs.values() for c in per.values()))
    exact = capacity_bits // unit <= max_cells
    if not exact:
        unit = -(-capacity_bits // max_cells)
    units = {n: {b: -(-c // unit) for b, c in per.items()} for n, per in costs.items()}
    bits = _dp(units, sensitivity, capacity_bits // unit)
    used = sum(costs[n][b] for n, b in bits.items())
    cost = sum(float(sensitivity[n][b]) for n, b in bits.items())
    return KnapsackResult(bits, cost, used, exact)


def _dp(units: Mapping[str, Mapping[int, int]], sensitivity: Mapping[str, Mapping[int, float]],
        cells: int) -> dict[str, int]:
    """best[c] = least summed sensitivity using exactly c units; then walk the choices back."""
    names = list(units)
    best = np.full(cells + 1, np.inf)
    best[0] = 0.0
    choice = np.zeros((len(names), cells + 1), dtype=np.int16)
    for i, name in enumerate(names):
        new = np.full(cells + 1, np.inf)
        for bits, size in units[name].items():
            if size > cells:
                continue
            cand = np.full(cells + 1, np.inf)
            cand[size:] = best[: cells + 1 - size] + float(sensitivity[name][bits])
            better = cand < new
            new[better], choice[i][better] = cand[better], bits
        best = new
    end, picked = cells - int(np.argmin(best[::-1])), {}  # ties: the fullest, not the emptiest
    for i in range(len(names) - 1, -1, -1):
        picked[names[i]] = int(choice[i][end])
        end -= units[names[i]][picked[names[i]]]
    return {n: picked[n] for n in names}
