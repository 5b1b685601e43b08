"""The numba back end of `lowbit.kernels.xnor` (imported only when numba is installed).

Same bit layout as the PyTorch path: channel c of a pixel is bit c % 64 of word c // 64 (bit 1
for x >= 0), padding pixels are all ones (+1), and a window's taps are concatenated tap after
tap. `conv` packs the input pixels once, then for every output pixel builds its window's words
and runs the popcount GEMM against the weights laid out (words, O), so the innermost loop runs
over output channels (vectorisable, VPOPCNTQ on AVX-512).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _popcount64(typingctx: Any, x: Any) -> Any:
    """LLVM's ctpop on a uint64 (one POPCNT instruction on x86-64)."""
    sig = types.uint64(types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return sig, codegen


@numba.njit(parallel=True, cache=True)
def _pack_pixels(x: np.ndarray, pad: int, cw: int) -> np.ndarray:
    n, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    out = np.zeros((n, hp, wp, cw), dtype=np.uint64)
    ones = np.zeros(cw, dtype=np.uint64)
    for ch in range(c):
        ones[ch // 64] |= np.uint64(1) << np.uint64(ch % 64)
    for r in numba.prange(n * hp):
        b, i = r // hp, r % hp
        if i < pad or i >= h + pad:
            for j in range(wp):
                out[b, i, j, :] = ones
            continue
        for j in range(pad):
            out[b, i, j, :] = ones
            out[b, i, wp - 1 - j, :] = ones
        for ch in range(c):  # rows of x and of out are both read / written contiguously
            word, bit = ch // 64, np.uint64(1) << np.uint64(ch % 64)
            row = x[b, ch, i - pad]
            for j in range(w):  # branch-free: bit if x >= 0
                out[b, i, j + pad, word] |= bit * np.uint64(row[j] >= 0)
    return out


@numba.njit(parallel=True, cache=True)
def _window_gemm(px: np.ndarray, wt: np.ndarray, c: int, kh: int, kw: int, stride: int,
                 k: int, corr: np.ndarray, out: np.ndarray) -> None:
    n, oc, oh, ow = out.shape
    cw = px.shape[3]
    nw = wt.shape[0]
    per = 64 // c if c < 64 else 1
    for r in numba.prange(n * oh):
        b, i = r // oh, r % oh
        cols = np.zeros(nw, dtype=np.uint64)
        acc = np.zeros(oc, dtype=np.int64)
        for j in range(ow):
            cols[:] = 0
            for t in range(kh * kw):
                pix = px[b, i * stride + t // kw, j * stride + t % kw]
                if c < 64:
                    cols[t // per] |= pix[0] << np.uint64((t % per) * c)
                else:
                    cols[t * cw:(t + 1) * cw] = pix
            acc[:] = 0
            for t in range(nw):
                v = cols[t]
                for o in range(oc):
                    # int64 + uint64 would be float64 in numba: cast the count
                    acc[o] += np.int64(_popcount64(v ^ wt[t, o]))  # type: ignore[call-arg]
            for o in range(oc):
                out[b, o, i, j] = k - 2 * acc[o] - corr[o, i, j]


def conv(x: np.ndarray, wt: np.ndarray, c: int, kh: int, kw: int, stride: int, pad: int,
         k: int, corr: np.ndarray) -> np.ndarray:
    """(N, O, OH, OW) int32 XNOR-popcount products with +1 padding, minus `corr` (O, OH, OW),
    the padding correction.

    `wt`: the weights' window words, (words, O) uint64 (as int64 bits)."""
    n, _, h, w = x.shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    px = _pack_pixels(np.ascontiguousarray(x, dtype=np.float32), pad, -(-c // 64))
    out = np.empty((n, wt.shape[1], oh, ow), dtype=np.int32)
    _window_gemm(px, np.ascontiguousarray(wt).view(np.uint64), c, kh, kw, stride, k,
                 np.ascontiguousarray(corr, dtype=np.int32), out)
    return out


def set_threads(threads: int) -> None:
    """Threads of numba's parallel loops."""
    numba.set_num_threads(threads)
