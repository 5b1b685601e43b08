"""Pure, vectorised quantization maths: no modules, no state, no gradient tricks.

Conventions: "rows" view a tensor as (C, M) - one row per output channel (dim 0) when
`per_channel`, else a single row. Codes are integer tensors shaped like the input, of the
smallest type that holds them (`code_dtype`: int8 for <= 8 bits but unsigned 8-bit); scales
are 0-d (per tensor) or (C,) (per channel), their statistics accumulated in float64.

Power-of-two code layout (pow2 and lbw): code `c` in {0, ±1, ..., ±M} stands for
`sign(c) * top * 2^(|c| - M)`, i.e. |c| = M is the top level and |c| = 1 the smallest non-zero
magnitude; `top` is the scale.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lowbit.quant.stats import abs_max, abs_sum


def code_dtype(max_code: int) -> torch.dtype:
    """Smallest signed integer type holding codes in [-max_code, max_code]."""
    return next(d for d in (torch.int8, torch.int16, torch.int32, torch.int64)
                if max_code <= torch.iinfo(d).max)


# ----------------------------------------------------------------------------- helpers
def rows(x: Tensor, per_channel: bool) -> Tensor:
    """(C, M) view of `x`: one row per dim-0 slice if `per_channel`, else one row."""
    return x.reshape(x.shape[0] if per_channel and x.dim() > 0 else 1, -1)


def channel_view(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-channel vector (C,) to broadcast over dim 0 of `like`; 0-d passes through."""
    return t.view(-1, *([1] * (like.dim() - 1))) if t.dim() == 1 else t


def row_scale(s: Tensor, per_channel: bool, dtype: torch.dtype) -> Tensor:
    """Float64 (C, 1) row statistic -> (C,) per channel or 0-d per tensor, in `dtype`."""
    s = s.reshape(-1).to(dtype)
    return s if per_channel else s.reshape(())


def mean_abs_rows(r: Tensor) -> Tensor:
    """Mean |r| of each row in float64, shape (C, 1)."""
    return r.abs().sum(dim=1, keepdim=True, dtype=torch.float64) / r.shape[1]


def sign_pm1(x: Tensor) -> Tensor:
    """Sign with sign(0) = +1 (binary nets need two levels, never 0)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


# ----------------------------------------------------------------------------- powers of two
def pow2_top_exponent(max_abs: float) -> int:
    """INQ's n1 = floor(log2(4 s / 3)), computed exactly: the n with 0.75*2^n <= s < 1.5*2^n.

    `math.log2` can land on the wrong side of an integer near s = 0.75 * 2^n; frexp cannot."""
    if not max_abs > 0 or not math.isfinite(max_abs):
        raise ValueError(f"pow2 needs a finite positive max |w|, got {max_abs}")
    mantissa, exp = math.frexp(max_abs)  # s = m * 2^e, m in [0.5, 1)
    return exp if mantissa >= 0.75 else exp - 1


def pow2_round_index(u: Tensor, n: int) -> Tensor:
    """Index of the level of {0, 1, 2, 4, ..., 2^(n-1)} nearest to `u` >= 0 (linear domain).

    Returns j in 0..n (j >= 1 means 2^(j-1)). Decision boundaries are 0.5, 1.5, 3, 6, ...,
    0.75*2^(n-1); a value exactly on a boundary takes the smaller magnitude (INQ's official
    `weightCluster_zero`), and anything above the last boundary takes the top level (clamp).
    """
    bounds = [0.5] + [0.75 * 2.0**j for j in range(1, n)]
    return torch.bucketize(u, torch.tensor(bounds, dtype=u.dtype, device=u.device))


def pow2_decode(codes: Tensor, top: Tensor, num_magnitudes: int) -> Tensor:
    """Values of power-of-two codes: sign(c) * top * 2^(|c| - M), 0 for c = 0.

    Computed in float64 (exact for any representable result) and rounded once to top's dtype,
    so tiny levels underflow exactly as they do in the forward pass.
    """
    mag = codes.abs().to(torch.float64)
    unit = torch.exp2(mag - num_magnitudes) * channel_view(top.to(torch.float64), codes)
    return (torch.sign(codes).to(torch.float64) * unit).to(top.dtype)


def pow2_encode(w: Tensor, bits: int, n1: int | None = None) -> tuple[Tensor, Tensor]:
    """INQ power-of-two quantization (spec §2.2, paper Eq. 4) as (codes, top = 2^n1).

    Levels {0, ±2^n2, ..., ±2^n1}, n2 = n1 + 1 - 2^(bits-2), nearest in the linear domain,
    ties to the smaller magnitude, |w| >= 1.5*2^n1 clamped to 2^n1.

    Args:
        w: weights (any shape).
        bits: 2..8; one bit codes "zero", the rest the signed powers of two.
        n1: top exponent; default recomputes it from max|w| (INQ passes the one of its
            partition step). An all-zero `w` without `n1` gives all-zero codes and top 0.
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"pow2 supports bits 2..8, got {bits}")
    m, a = 2 ** (bits - 2), w.detach().abs().to(torch.float64)
    if n1 is None:  # pow2_top_exponent on the device: no host sync, no data-dependent branch
        s = a.amax() if a.numel() else a.new_zeros(())
        mantissa, exp = torch.frexp(s)
        e1 = torch.where(mantissa >= 0.75, exp, exp - 1).to(torch.float64)
        top = torch.where(s > 0, torch.exp2(e1), 0.0).to(w.dtype)
    else:
        e1, top = a.new_tensor(float(n1)), torch.tensor(2.0**n1, dtype=w.dtype, device=w.device)
    # scaling by a power of two is exact, so ties at 1.5*2^k are decided exactly
    u = a * torch.exp2(m - 1 - e1)
    codes = (pow2_round_index(u, m) * torch.sign(w.detach()).to(torch.int64)).to(code_dtype(m))
    return codes, top


def pow2_quantize(w: Tensor, bits: int, n1: int | None = None) -> Tensor:
    """INQ power-of-two quantization of `w` (values); see `pow2_encode`."""
    codes, top = pow2_encode(w, bits, n1)
    return pow2_decode(codes, top, 2 ** (bits - 2))


# ----------------------------------------------------------------------------- ternary
def use_numpy(t: Tensor) -> bool:
    """Whether to hand `t` to numpy (faster sorts on CPU); never under torch.compile."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


_CHUNK = 1 << 15  # elements per chunk of the float64 prefix-sum scan (fits in L2)


def sorted_abs(r: Tensor) -> Tensor:
    """|r|, each row of 2-d `r` sorted ascending, float32/64 (bf16/float16 -> float32, exact).
    On CPU numpy sorts the |r| copy in place (values only, several times faster than torch)."""
    a = r.abs() if r.dtype in (torch.float32, torch.float64) else r.abs().float()
    if not use_numpy(a):
        return torch.sort(a, dim=1).values
    a.numpy().sort(axis=1)
    return a


def _support_rows(srt: Tensor) -> tuple[Tensor, Tensor]:
    """(k*, S_k*) (C, 1) of ascending rows: first argmax of S_k^2/k, S_k float64 sums."""
    s = torch.cumsum(srt.flip(1), dim=1, dtype=torch.float64)
    k = torch.arange(1, srt.shape[1] + 1, dtype=torch.float64, device=srt.device)
    kstar = torch.argmax(torch.mul(s, s).div_(k), dim=1, keepdim=True)
    return kstar + 1, torch.gather(s, 1, kstar)


def _support_chunked(srt: np.ndarray) -> tuple[Tensor, Tensor]:
    """`_support_rows` on CPU: the same sequential float64 sums, scanned in cache-sized column
    chunks (all rows at once), so no full-size float64 temporaries are written."""
    c, m = srt.shape
    desc, width, at = srt[:, ::-1], max(1, _CHUNK // c), np.arange(c)
    buf, h, k = np.empty((c, width)), np.empty((c, width)), np.arange(1.0, width + 1.0)
    best, k_best, s_best, carry = np.full(c, -1.0), np.ones(c, np.int64), np.zeros(c), np.zeros(c)
    for start in range(0, m, width):
        n = min(width, m - start)
        s, hh = buf[:, :n], h[:, :n]
        s[:] = desc[:, start:start + n]
        s[:, 0] += carry  # continue each running sum exactly as one cumsum would
        np.cumsum(s, axis=1, out=s)
        np.divide(np.multiply(s, s, out=hh), k[:n] + start, out=hh)
        j = hh.argmax(axis=1)
        better = hh[at, j] > best  # strictly: the first maximum wins, as in argmax
        best, k_best = np.where(better, hh[at, j], best), np.where(better, start + j + 1, k_best)
        s_best, carry = np.where(better, s[at, j], s_best), s[:, n - 1].copy()
    return torch.from_numpy(k_best[:, None]), torch.from_numpy(s_best[:, None])


def ternary_exact(w: Tensor, per_channel: bool = False) -> tuple[Tensor, Tensor]:
    """Exact minimiser of ||W - alpha*Q||^2 over alpha > 0, Q in {-1, 0, 1}^N (LBW §4.3).

    Derivation: for a support of size k, Q = sign(W) there, the best alpha is the mean of the
    supported |W| and the residual is ||W||^2 - (sum of those |W|)^2 / k, so the best support
    of size k holds the k largest magnitudes. Hence: sort |W| descending, S_k = prefix sums,
    k* = argmax S_k^2/k, alpha = S_k*/k*. One sort plus a few linear passes: O(N log N).
    S_k and S_k^2/k are float64 whatever the input dtype (float32, bf16 and float16 values are
    exact in float64), so every input dtype gets the float64 result: the same support and
    alpha up to the final rounding to the input dtype.

    Ties: magnitudes equal to the k*-th largest are all kept. This is still optimal: if
    v_k = v_(k+1) = v > 0 and adding v_k did not hurt, adding v_(k+1) strictly helps (the gain
    condition grows by 2k*v^2), so an optimal support never splits a tie group.

    Returns:
        (int8 codes in {-1, 0, 1}, alpha) with alpha 0-d or (C,); an all-zero row gives alpha 0.
    """
    r = rows(w.detach(), per_channel)
    srt = sorted_abs(r)
    chunked = use_numpy(srt) and srt.numel() > 2 * _CHUNK
    kstar, s_k = _support_chunked(srt.numpy()) if chunked else _support_rows(srt)
    thr = torch.gather(srt, 1, srt.shape[1] - kstar)  # the k*-th largest magnitude
    kk = srt.shape[1] - torch.searchsorted(srt, thr)  # >= k*: the whole tie group at thr
    alpha = (s_k + (kk - kstar) * thr.to(torch.float64)) / kk
    # all kept magnitudes equal (re-quantizing alpha*Q): alpha is that value, not a rounded mean
    alpha = torch.where(srt[:, -1:] == thr, thr.to(torch.float64), alpha)
    t = thr.to(r.dtype)  # |w| >= thr without materialising |w|; thr = 0 gives all zeros
    codes = (r >= t).view(torch.int8).sub_((r <= -t).view(torch.int8))
    return codes.reshape(w.shape), row_scale(alpha, per_channel, w.dtype)


def twn_ternary(w: Tensor, per_channel: bool = False, ratio: float = 0.7) -> tuple[Tensor, Tensor]:
    """TWN (Li & Liu 2016): Delta = ratio*mean|W|, Q = sign(W)*1[|W| > Delta].

    alpha is the mean |W| over the kept (non-zero) positions; 0 if none is kept.
    """
    r = rows(w.detach(), per_channel)
    a = r.abs()
    keep = a > ratio * mean_abs_rows(r).to(r.dtype)
    n = keep.sum(dim=1, keepdim=True).clamp_min(1)
    alpha = torch.where(keep, a, 0).sum(dim=1, keepdim=True, dtype=torch.float64) / n
    codes = torch.where(keep, torch.sign(r), 0).to(torch.int8).reshape(w.shape)
    return codes, row_scale(alpha, per_channel, w.dtype)


def binary(w: Tensor, per_channel: bool = False) -> tuple[Tensor, Tensor]:
    """Group-Net Eq. 1 / XNOR: codes sign(W) in {-1, +1} (sign(0) = +1), scale mean|W|."""
    r = rows(w.detach(), per_channel)
    return sign_pm1(w.detach()).to(torch.int8), row_scale(mean_abs_rows(r), per_channel, w.dtype)


# ----------------------------------------------------------------------------- uniform
def uniform_num_steps(bits: int, signed: bool) -> int:
    """L: signed levels are {-L..L} with L = 2^(b-1)-1; unsigned {0..L} with L = 2^b - 1."""
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def uniform_encode(x: Tensor, clip: Tensor, bits: int, signed: bool) -> tuple[Tensor, Tensor]:
    """Uniform quantization on [-T, T] (signed) or [0, T] (unsigned), spec §1.3.

    codes = round(clip(x, lo, T) / Delta), Delta = T / L. `clip` T is 0-d or (C,) per channel
    (dim 0); T = 0 gives Delta = 0 and all-zero codes.

    Returns:
        (codes, Delta) with Delta shaped like `clip`.
    """
    big_l = uniform_num_steps(bits, signed)
    if big_l < 1:
        raise ValueError(f"signed uniform quantization needs bits >= 2, got {bits}")
    t = channel_view(clip.detach().to(x.dtype), x)
    step = t / big_l
    xc = torch.minimum(torch.maximum(x.detach(), -t if signed else torch.zeros_like(t)), t)
    codes = torch.round(xc / torch.where(step > 0, step, 1.0)).to(code_dtype(big_l))
    return codes, step.reshape(clip.shape)


# ----------------------------------------------------------------------------- GDRQ scale-clip
def scale_clip_threshold(x: Tensor, k: float, stat: str = "mean",
                         group_size: int | None = None) -> Tensor:
    """Scale-Clip threshold T = k * stat(x) (GDRQ §3.3, §3.5). `stat`: "mean" (mean |x|),
    "std", or "max" (max |x|: with k = 1 nothing is clipped, the plain max-range quantizer of
    GDRQ's "without Scale-Clip" ablation). With `group_size` (>0) the statistic is taken over
    each block of `group_size` consecutive output channels (dim 0) and returned per channel,
    shape (C,); otherwise over the whole tensor, 0-d."""
    if stat not in ("mean", "std", "max"):
        raise ValueError(f"scale-clip stat must be 'mean', 'std' or 'max', got {stat!r}")
    c = x.shape[0] if x.dim() else 1
    if group_size and c % group_size:
        raise ValueError(f"group_size {group_size} must divide the {c} output channels")
    if not group_size and stat != "std":  # activations: flat passes over x's own memory
        s = abs_sum(x).double() / max(x.numel(), 1) if stat == "mean" else abs_max(x).double()
        return (k * s).to(x.dtype)
    g = x.detach().reshape(c // group_size if group_size else 1, -1)
    if stat == "mean":  # float32 accumulation: a float64 copy of an activation costs 8x more
        s = g.abs().mean(dim=1, keepdim=True, dtype=torch.float32).double()
    elif stat == "std":
        s = g.double().std(dim=1, correction=0, keepdim=True)
    else:
        s = g.abs().amax(dim=1, keepdim=True).double()
    t = (k * s).to(x.dtype).reshape(-1)
    return t.repeat_interleave(group_size) if group_size else t.reshape(())


# ----------------------------------------------------------------------------- DoReFa, LSQ
def dorefa_normalize(w: Tensor) -> Tensor:
    """DoReFa's tanh normalisation tanh(w)/max|tanh(w)| in [-1, 1] (differentiable)."""
    t = torch.tanh(w)
    m = t.abs().max()  # not detached: DoReFa's gradient flows through the max as well
    return t / torch.where(m > 0, m, 1.0)


def dorefa_encode(v: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """DoReFa k-bit weights from normalised v in [-1, 1]: 2*quantize_k((v+1)/2) - 1, written as
    odd codes c = 2i - (2^k - 1) in {-(2^k-1), ..., 2^k-1} times 1/(2^k - 1) (symmetric, no 0)."""
    n = 2**bits - 1
    i = torch.round((v.detach() + 1) / 2 * n)
    codes = (2 * i - n).to(code_dtype(n))
    return codes, torch.tensor(1.0 / n, dtype=v.dtype, device=v.device)


def lsq_bounds(bits: int, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P): codes lie in [-Q_N, Q_P] (LSQ, Esser et al. 2020)."""
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def lsq_init_step(x: Tensor, bits: int, signed: bool) -> Tensor:
    """LSQ's initial step 2*mean|x|/sqrt(Q_P) (0-d; floored at tiny so it is never 0)."""
    qp = lsq_bounds(bits, signed)[1]
    s = 2 * mean_abs_rows(rows(x.detach(), False)).reshape(()) / math.sqrt(qp)
    return s.clamp_min(torch.finfo(x.dtype).tiny).to(x.dtype)
