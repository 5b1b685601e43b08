"""The numba back end of `lowbit.kernels.xnor` (imported only when numba is installed).

Same bit layout as the PyTorch path: channel c of a pixel is bit c % 64 of word c // 64 (bit 1
for x >= 0), padding pixels are all ones (+1), and a window's taps are concatenated tap after
tap. `conv` packs the input pixels once (a 1 x 1 convolution without padding packs only the
pixels its stride reads), lays each image's windows out as (words, pixels), then runs the
popcount GEMM one (image, output channel) per parallel task with the pixels innermost:
contiguous loads, contiguous writes of out[b, o], and a loop LLVM vectorises (VPOPCNTQ on
AVX-512).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _popcount64(typingctx: Any, x: Any) -> Any:
    """LLVM's ctpop on a uint64 (POPCNT, or VPOPCNTQ once vectorised)."""
    sig = types.uint64(types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return sig, codegen


@numba.njit(cache=True)
def _ones(c: int, cw: int) -> np.ndarray:
    ones = np.zeros(cw, dtype=np.uint64)
    for ch in range(c):
        ones[ch // 64] |= np.uint64(1) << np.uint64(ch % 64)
    return ones


@numba.njit(cache=True)
def _or_signs(acc: np.ndarray, row: np.ndarray, step: int, shift: Any) -> None:
    """acc[j] |= (row[j * step] >= 0) << shift, branch-free; the contiguous case apart so that
    LLVM vectorises it."""
    if step == 1:
        for j in range(acc.size):
            acc[j] |= np.uint64(row[j] >= 0) << shift
    else:
        for j in range(acc.size):
            acc[j] |= np.uint64(row[j * step] >= 0) << shift


@numba.njit(parallel=True, cache=True)
def _pack_pixels(x: np.ndarray, pad: int, cw: int, step: int) -> np.ndarray:
    """(N, H', W', cw) words of the +1-padded input; `step` > 1 (only with pad 0) keeps every
    step-th pixel. One image per parallel task."""
    n, c, h, w = x.shape
    hp, wp = (h + 2 * pad - 1) // step + 1, (w + 2 * pad - 1) // step + 1
    out = np.empty((n, hp, wp, cw), dtype=np.uint64)
    ones = _ones(c, cw)
    for b in numba.prange(n):
        acc = np.empty(wp - 2 * pad, dtype=np.uint64)
        for i in range(hp):
            if i < pad or i >= hp - pad:
                for j in range(wp):
                    out[b, i, j, :] = ones
                continue
            for j in range(pad):
                out[b, i, j, :] = ones
                out[b, i, wp - 1 - j, :] = ones
            for word in range(cw):
                acc[:] = 0
                for ch in range(word * 64, min(c, word * 64 + 64)):  # rows read contiguously
                    _or_signs(acc, x[b, ch, i * step - pad], step, np.uint64(ch % 64))
                out[b, i, pad:pad + acc.size, word] = acc
    return out


@numba.njit(parallel=True, cache=True)
def _windows(px: np.ndarray, c: int, kh: int, kw: int, stride: int, oh: int, ow: int,
             nw: int) -> np.ndarray:
    """(N, words, OH * OW) window bit strings, taps concatenated; one image per task."""
    n, cw = px.shape[0], px.shape[3]
    cols = np.zeros((n, nw, oh * ow), dtype=np.uint64)
    per = 64 // c if c < 64 else 1
    for b in numba.prange(n):
        for t in range(kh * kw):
            di, dj = t // kw, t % kw
            for i in range(oh):
                src = px[b, i * stride + di]
                if c < 64:  # several taps share a word
                    word, shift = t // per, np.uint64((t % per) * c)
                    for j in range(ow):
                        cols[b, word, i * ow + j] |= src[j * stride + dj, 0] << shift
                else:
                    for q in range(cw):
                        for j in range(ow):
                            cols[b, t * cw + q, i * ow + j] = src[j * stride + dj, q]
    return cols


@numba.njit(parallel=True, cache=True)
def _popcount_gemm(cols: np.ndarray, wt: np.ndarray, k: int, corr: np.ndarray,
                   out: np.ndarray) -> None:
    """out[b, o] = k - 2 popcount(cols[b] ^ wt[o]) - corr[o]; one (image, output channel) per
    task, so that a batch of one still uses every thread."""
    n, oc, oh, ow = out.shape
    nw, pixels = wt.shape[1], oh * ow
    for r in numba.prange(n * oc):
        b, o = r // oc, r % oc
        acc = np.zeros(pixels, dtype=np.int64)
        for t in range(nw):
            wv = wt[o, t]
            for p in range(pixels):
                # int64 + uint64 would be float64 in numba: cast the count
                acc[p] += np.int64(_popcount64(cols[b, t, p] ^ wv))  # type: ignore[call-arg]
        ob, co = out[b, o].reshape(pixels), corr[o].reshape(pixels)
        for p in range(pixels):
            ob[p] = k - 2 * acc[p] - co[p]


def conv(x: np.ndarray, wt: np.ndarray, c: int, kh: int, kw: int, stride: int, pad: int,
         k: int, corr: np.ndarray) -> np.ndarray:
    """(N, O, OH, OW) int32 XNOR-popcount products with +1 padding, minus `corr` (O, OH, OW),
    the padding correction (zeros without padding).

    `wt`: the weights' window words, (O, words) uint64 (as int64 bits)."""
    n, _, h, w = x.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    step = stride if (kh, kw, pad) == (1, 1, 0) else 1  # a 1x1 conv reads every stride-th pixel
    px = _pack_pixels(x, pad, -(-c // 64), step)
    stride //= step
    oh, ow = (px.shape[1] - kh) // stride + 1, (px.shape[2] - kw) // stride + 1
    wt = np.ascontiguousarray(wt).view(np.uint64)
    out = np.empty((n, wt.shape[0], oh, ow), dtype=np.int32)
    cols = _windows(px, c, kh, kw, stride, oh, ow, wt.shape[1])
    _popcount_gemm(cols, wt, k, np.ascontiguousarray(corr, dtype=np.int32), out)
    return out


def set_threads(threads: int) -> None:
    """Threads of numba's parallel loops."""
    numba.set_num_threads(threads)
