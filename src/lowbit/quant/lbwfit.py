"""LBW-Net's least-squares power-of-two fit (spec §4.2, §4.4): min ||W - alpha*Q||^2.

Q_i is in S_n = {0, ±1, ±2, ..., ±2^(n-1)}, n = 2^(bits-1) - 1, and alpha > 0 is one scale per
row (`functional.rows`). Codes use the pow2 layout of `functional` with M = n.

The solver ("alternating", the reference) reaches the least-squares optimum; the reasoning:

- For fixed alpha the objective separates: Q_i is the level nearest |W_i|/alpha, i.e. bucket j
  of the boundaries alpha*b_j, b = (1/2, 3/2, 3, 6, ..., 3/4*2^(n-1)) (ties to the smaller level).
  So Q(alpha) is piecewise constant in alpha, and on each piece the objective is a quadratic in
  alpha. For fixed Q the best alpha is <|W|,Q>/<Q,Q> and the objective is
  g(Q) = ||W||^2 - <|W|,Q>^2/<Q,Q>. Hence min_alpha f(alpha) = min over alpha of g(Q(alpha)).
- With |W| sorted once and its prefix sums, <|W|,Q(alpha)> and <Q,Q> cost n binary searches
  (one per boundary), not a pass over W; so g(Q(alpha)) is cheap for hundreds of alphas.
- Range: alpha > 2 max|W| zeroes everything. Once alpha <= min_{W_i != 0} |W_i| / (3/4), halving
  alpha only adds a level nobody uses and drops the top one, so it never helps; the search
  covers log2(alpha) from there (one octave lower) up to log2(2 max|W|), at most `MAX_OCTAVES`.
- Search: `COARSE * octaves(n)` log-spaced candidates over the row's range (at least `COARSE` per
  octave; one size for every tensor), each scored by g(Q(alpha)) (i.e. with its
  best scale); the `TOP` best are refined by Lloyd steps (alpha <- <|W|,Q>/<Q,Q>,
  Q <- nearest), which never increase g, until Q stops changing or `iters` steps; the best Q seen
  wins and alpha is its exact refit. Every row of a per-channel tensor is solved at once.

Cost: see `lowbit.quant.codebook.LBW` (measured before the grid took one size for every tensor;
the candidates cost n binary searches each, small beside the sort).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lowbit.quant.functional import (
    code_dtype,
    pow2_round_index,
    row_scale,
    rows,
    ternary_exact,
    use_numpy,
)

COARSE = 4  # coarse candidates per octave of the widest range (8: no measurable gain, 1.5x time)
TOP = 3  # best coarse candidates whose neighbourhood is searched finely
FINE = 15  # fine candidates around each, between its two coarse neighbours
LLOYD_GAIN = 1e-6  # Lloyd steps stop once they gain less than this fraction of the objective
MAX_OCTAVES = 48  # search depth below 2 max|W| (weights below max|W|*2^-48 do not matter)


def lbw_num_magnitudes(bits: int) -> int:
    """n = 2^(bits-1) - 1 non-zero magnitudes {1, 2, ..., 2^(n-1)} (spec §4.2)."""
    return 2 ** (bits - 1) - 1


def _lbw_codes(a64: Tensor, alpha: Tensor, n: int) -> Tensor:
    """Nearest level index of |W|/alpha per row (alpha (C, 1); alpha 0 only for zero rows).

    In float64: at 8 bits the smallest level is 2^-126 of the top one, below float32's normal
    range, so float32 division would lose the small levels.
    """
    return pow2_round_index(a64 / torch.where(alpha > 0, alpha, 1.0), n)


def _lbw_refit(a64: Tensor, q: Tensor) -> Tensor:
    """alpha*(Q) = <|W|, Q> / <Q, Q> per row, (C, 1) float64; 0 where Q = 0."""
    num, den = torch.linalg.vecdot(a64, q), torch.linalg.vecdot(q, q)
    return (num / den.clamp_min(1.0)).unsqueeze(1)


def _sorted_rows(a: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of |W| (C, N) sorted ascending (float32 or float64), and float64 prefix sums
    (C, N + 1), starting at 0."""
    a = a if a.dtype in (torch.float32, torch.float64) else a.float()
    if use_numpy(a):
        srt = torch.from_numpy(np.sort(a.numpy(), axis=1))
    else:
        srt = torch.sort(a, dim=1).values
    return srt, torch.nn.functional.pad(torch.cumsum(srt, dim=1, dtype=torch.float64), (1, 0))


def _levels(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(boundaries b (n,), magnitudes (0, 1, 2, ..., 2^(n-1)) (n + 1,)), float64."""
    j = torch.arange(n, dtype=torch.float64, device=device)
    bounds = torch.where(j == 0, 0.5, 0.75 * torch.exp2(j))
    return bounds, torch.cat([j.new_zeros(1), torch.exp2(j)])


def _scores(table: tuple[Tensor, Tensor, Tensor, Tensor],
            alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For Q = Q(alpha) of every candidate alpha (C, K): (g - ||W||^2, refit alpha, counts).

    `table` is (sorted |W|, prefix sums, boundaries, magnitudes); `counts` (C, K, n) are the
    numbers of |W| <= alpha*b_j, which determine Q.
    """
    srt, pre, bounds, mags = table
    (c, k), n = alpha.shape, bounds.shape[0]
    query = (alpha[..., None] * bounds).view(c, -1).to(srt.dtype)
    cnt = torch.searchsorted(srt, query, right=True).view(c, k, n)  # |W| <= alpha*b_j
    ends = torch.cat([cnt, cnt.new_full((c, k, 1), srt.shape[1])], dim=2)  # bucket j ends
    upto = torch.gather(pre, 1, ends.view(c, -1)).view(c, k, n + 1)  # sum of |W| below
    sums = torch.diff(upto, dim=2, prepend=upto.new_zeros(c, k, 1))
    counts = torch.diff(ends, dim=2, prepend=ends.new_zeros(c, k, 1)).to(torch.float64)
    s1, s2 = torch.linalg.vecdot(sums, mags), torch.linalg.vecdot(counts, mags.square())
    score = torch.where(s2 > 0, -s1.square() / s2.clamp_min(1.0), 0.0)
    return score, s1 / s2.clamp_min(1.0), cnt


def octaves(n: int) -> int:
    """The widest search range in octaves of alpha for n magnitude levels (module docstring)."""
    return min(MAX_OCTAVES, n + 12)


def _grid(srt: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Log2 of the search range's top (C, 1) and its width in octaves (C, 1) (module docstring)."""
    tiny = torch.finfo(torch.float64).tiny
    top = srt[:, -1:].double().clamp_min(tiny)
    first_pos = torch.searchsorted(srt, torch.zeros_like(srt[:, :1]), right=True)
    low = torch.gather(srt, 1, first_pos.clamp_max(srt.shape[1] - 1)).double().clamp_min(tiny)
    t_hi = torch.log2(2 * top)
    return t_hi, (t_hi - torch.log2(low / 0.75) + 1).clamp(1.0, octaves(n))


def _best(score: Tensor, at: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The `k` lowest scores per row and the candidates (same shape) that gave them."""
    best, pick = score.topk(min(k, score.shape[1]), dim=1, largest=False)
    return best, torch.gather(at, 1, pick)


def _lbw_search(a: Tensor, n: int, iters: int) -> tuple[Tensor, Tensor]:
    """(alpha, its refit) (C, 1) float64: Q(alpha) is the best Q found, the refit its best scale.
    """
    table = (*_sorted_rows(a), *_levels(n, a.device))
    t_hi, span = _grid(table[0], n)
    # One grid size for every tensor, eager or compiled: no host sync, and an exported or
    # compiled model picks exactly the levels eager does (a grid sized by the data found other,
    # equally good optima). The candidates cost n binary searches each, small beside the sort.
    g = COARSE * octaves(n)
    step = span / g  # (C, 1) octaves between coarse candidates
    # ascending alpha, so that among equal fits (exact octave shifts of one Q) the first,
    # smallest alpha wins: the largest W sits near the top level, and the top cannot overflow
    t = t_hi - step * (g - 0.5 - torch.arange(g, dtype=torch.float64, device=a.device))
    t = _best(_scores(table, torch.exp2(t))[0], t, TOP)[1].sort(dim=1).values
    fine = torch.linspace(-1, 1, FINE + 2, dtype=torch.float64, device=a.device)[1:-1]
    t = (t[..., None] + step[..., None] * fine).reshape(t.shape[0], -1)
    score, refit, _ = _scores(table, torch.exp2(t))
    i = score.argmin(dim=1, keepdim=True)
    best, at = torch.gather(score, 1, i), torch.exp2(torch.gather(t, 1, i))
    scale = cur = torch.gather(refit, 1, i)
    floor = -best * LLOYD_GAIN  # stop once a Lloyd step gains less than this
    active = torch.ones((), dtype=torch.bool, device=a.device)
    for _ in range(iters):  # Lloyd steps from the best candidate: never worse
        score, refit, _ = _scores(table, cur)
        gain = best - score
        better = (gain > 0) & active
        best, at = torch.where(better, score, best), torch.where(better, cur, at)
        scale = torch.where(better, refit, scale)
        active = active & (gain > floor).any()  # at a fixed point (or crawling): stop
        if not torch.compiler.is_compiling() and not bool(active):
            break  # eager shortcut; compiled, the remaining steps change nothing
        cur = torch.where(refit > 0, refit, cur)
    return at, scale


def lbw_fit(w: Tensor, bits: int, method: str = "alternating", iters: int = 20,
            r: float = 0.5, per_channel: bool = False) -> tuple[Tensor, Tensor]:
    """Fit alpha*Q, Q in S_n = {0, ±1, ±2, ..., ±2^(n-1)}, n = 2^(bits-1)-1 (LBW §4.2, §4.4).

    Methods:
        "alternating": the least-squares optimum (module docstring): candidate search over alpha
            plus at most `iters` Lloyd refinement steps (Q <- nearest(W/alpha),
            alpha <- <W,Q>/<Q,Q>); more steps never give a worse fit. Within 0.5% of a dense
            search over alpha on Gaussian, Laplace and Student-t weights, b = 3..8.
        "threshold": one-parameter rule 2^(n-1)*alpha = r * max|W|, then Q <- nearest(W/alpha).
            Not the paper's (unrecovered) formula. Cheaper: one pass, no sort.
    bits = 2 (n = 1) is solved exactly by `ternary_exact` for either method.

    Returns:
        (codes in pow2 layout with M = n, top level 2^(n-1)*alpha), top 0-d or (C,).
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"lbw supports bits 2..8, got {bits}")
    if method not in ("alternating", "threshold"):
        raise ValueError(f"lbw method must be 'alternating' or 'threshold', got {method!r}")
    if bits == 2:
        return ternary_exact(w, per_channel)
    n = lbw_num_magnitudes(bits)
    rr = rows(w.detach(), per_channel)
    a = rr.abs()
    a64 = a.to(torch.float64)
    if method == "threshold":
        alpha = a.amax(dim=1, keepdim=True).to(torch.float64) * (r / 2.0 ** (n - 1))
        idx, top = _lbw_codes(a64, alpha, n), alpha * 2.0 ** (n - 1)
    else:
        at, alpha = _lbw_search(a, n, iters)
        idx, top = _top_at_largest(_lbw_codes(a64, at, n), alpha, n)
    idx = idx.to(code_dtype(n))
    codes = torch.where(rr < 0, idx.neg(), idx).reshape(w.shape)
    return codes, row_scale(top, per_channel, w.dtype)


def _top_at_largest(idx: Tensor, alpha: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The same values alpha*2^(idx-1) written with the scale at the largest level used.

    Shifting every non-zero index up by s and alpha down by 2^s changes no value, so the top
    level 2^(n-1)*alpha' is the largest output (about max|W|): it cannot overflow the dtype,
    whereas alpha*2^(n-1) can at 8 bits (n = 127) when the fit uses only the low levels.
    """
    used = idx.amax(dim=1, keepdim=True)
    shift = torch.where(used > 0, n - used, 0)
    return torch.where(idx > 0, idx + shift, idx), alpha * torch.exp2((used - 1).clamp_min(0))
