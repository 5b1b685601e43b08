"""The numba back end of `lowbit.kernels.xnor` (imported only when numba is installed).

Same bit layout as the PyTorch path: channel c of a pixel is bit c % 64 of word c // 64 (bit 1
for x >= 0), padding pixels are all ones (+1), and a window's taps are concatenated tap after
tap. `conv` runs one parallel task per (image, group of output channels). A task packs its
image's pixels from the float input, or, given words packed beforehand (`pack`), copies them with
their +1 border (a 1 x 1 convolution without padding takes only the pixels its stride reads);
it lays the windows out as (words, pixels) (a 1 x 1 window is the pixel's words, read in place),
in buffers small enough to stay in cache, then runs the popcount GEMM for its output channels:
two channels at a time sharing each word's load, up to three words summed before the output is
touched, pixels innermost, so that LLVM vectorises the loop (VPOPCNTQ on AVX-512). With fewer
images than threads the output channels are split into groups, and each group's task packs its
image again (cheap next to the GEMM).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def _popcount64(typingctx: Any, x: Any) -> Any:
    """LLVM's ctpop on a uint64 (POPCNT, or VPOPCNTQ once vectorised)."""
    sig = types.uint64(types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return sig, codegen


@numba.njit(inline="always")
def _pc(x: Any) -> Any:
    """Set bits of a uint64 as int32 (int32 + uint64 would be float64 in numba)."""
    return np.int32(_popcount64(x))  # type: ignore[call-arg]


@numba.njit(cache=True)
def _ones(c: int, cw: int) -> np.ndarray:
    """The words of a +1 padding pixel: the c channel bits set, the unused high bits 0."""
    ones = np.zeros(cw, dtype=np.uint64)
    for ch in range(c):
        ones[ch // 64] |= np.uint64(1) << np.uint64(ch % 64)
    return ones


@numba.njit(cache=True)
def _pack_image(x: np.ndarray, pad: int, step: int, ones: np.ndarray, out: np.ndarray) -> None:
    """out (cw, H', W'): the words of one +1-padded image (C, H, W), a plane per word; `step`
    > 1 (only with pad 0) keeps every step-th pixel. Channel after channel, each ORs its sign
    bits into the plane (indexed directly, no views: LLVM vectorises the contiguous case)."""
    cw, hp, wp = out.shape
    hi, wi = hp - 2 * pad, wp - 2 * pad
    if pad < 0 or step < 1:  # never true; it tells LLVM the indices below are >= 0, so that
        return  # it drops numba's negative-index wraparound and vectorises the loops
    for q in range(cw):
        for i in range(hp):
            for j in range(wp):
                inside = pad <= i < hp - pad and pad <= j < wp - pad
                # uint64 on both sides: numba types `0 if .. else <uint64>` as float64, which
                # rounds a full word of ones to 2^64, whose conversion back is undefined (AVX-512
                # saturates it to all ones, AVX2 does not: a wrong border for 64k channels)
                out[q, i, j] = np.uint64(0) if inside else ones[q]
    for ch in range(x.shape[0]):
        q, bit = ch // 64, np.uint64(ch % 64)
        if step == 1:
            for i in range(hi):
                for j in range(wi):
                    out[q, i + pad, j + pad] |= np.uint64(x[ch, i, j] >= 0) << bit
        else:
            for i in range(hi):
                for j in range(wi):
                    out[q, i, j] |= np.uint64(x[ch, i * step, j * step] >= 0) << bit


@numba.njit(cache=True)
def _window_image(px: np.ndarray, c: int, kh: int, kw: int, stride: int, ow: int,
                  cols: np.ndarray) -> None:
    """cols (words, OH * OW): one image's window bit strings, taps concatenated; fewer than 64
    channels share a word between taps."""
    cw, oh = px.shape[0], cols.shape[1] // ow
    per = 64 // c if c < 64 else 1
    if kw < 1 or stride < 1 or ow < 1 or c < 1:  # never true: lets LLVM vectorise (as above)
        return
    cols[:] = 0
    for t in range(kh * kw):
        di, dj = t // kw, t % kw
        for q in range(cw):
            word = t // per if c < 64 else t * cw + q
            shift = np.uint64((t % per) * c if c < 64 else 0)
            if stride == 1:
                for i in range(oh):
                    for j in range(ow):
                        cols[word, i * ow + j] |= px[q, i + di, j + dj] << shift
            else:
                for i in range(oh):
                    for j in range(ow):
                        cols[word, i * ow + j] |= px[q, i * stride + di, j * stride + dj] << shift


@numba.njit(cache=True)
def _gemm_pair(cols: np.ndarray, wa: np.ndarray, wb: np.ndarray, oa: np.ndarray,
               ob: np.ndarray) -> None:
    """oa -= 2 popcount(cols ^ wa), ob likewise with wb (summed over the words), sharing each
    word's load; three words at a time before the outputs are touched."""
    nw, pixels = cols.shape
    t = 0
    while t < nw:
        if nw - t >= 3:
            r0, r1, r2 = cols[t], cols[t + 1], cols[t + 2]
            a0, a1, a2, b0, b1, b2 = wa[t], wa[t + 1], wa[t + 2], wb[t], wb[t + 1], wb[t + 2]
            for p in range(pixels):
                x0, x1, x2 = r0[p], r1[p], r2[p]
                oa[p] -= 2 * (_pc(x0 ^ a0) + _pc(x1 ^ a1) + _pc(x2 ^ a2))
                ob[p] -= 2 * (_pc(x0 ^ b0) + _pc(x1 ^ b1) + _pc(x2 ^ b2))
            t += 3
        else:
            r0, a0, b0 = cols[t], wa[t], wb[t]
            for p in range(pixels):
                x0 = r0[p]
                oa[p] -= 2 * _pc(x0 ^ a0)
                ob[p] -= 2 * _pc(x0 ^ b0)
            t += 1


@numba.njit(cache=True)
def _pad_words(words: np.ndarray, pad: int, step: int, ones: np.ndarray, out: np.ndarray) -> None:
    """out (cw, H', W'): one packed image (cw, H, W) (from `pack`) with a +1 border of `pad`
    pixels; `step` > 1 (only with pad 0) keeps every step-th pixel."""
    cw, hp, wp = out.shape
    if pad < 0 or step < 1:  # never true: lets LLVM vectorise (as in _pack_image)
        return
    for q in range(cw):
        for i in range(hp):
            for j in range(wp):
                inside = pad <= i < hp - pad and pad <= j < wp - pad
                out[q, i, j] = words[q, (i - pad) * step, (j - pad) * step] if inside else ones[q]


def _image_words(image: np.ndarray, pad: int, step: int, ones: np.ndarray,
                 out: np.ndarray) -> None:
    """One image's padded words: packed from float signs, or padded from words `pack` made."""
    raise NotImplementedError  # only called from numba code, which takes the overload below


@overload(_image_words)
def _image_words_impl(image, pad, step, ones, out):  # type: ignore[no-untyped-def]
    # (no annotations: numba requires the same parameters, annotations included, as the lambdas)
    """Picks, when `_conv` is compiled, the packing (float input) or padding (words) step."""
    if image.dtype == types.uint64:
        return lambda image, pad, step, ones, out: _pad_words(image, pad, step, ones, out)
    return lambda image, pad, step, ones, out: _pack_image(image, pad, step, ones, out)


@numba.njit(cache=True)
def _channels(cols: np.ndarray, wt: np.ndarray, k: int, corr: np.ndarray, lo: int, hi: int,
              out: np.ndarray) -> None:
    """out[o] = k - corr[o] - 2 popcount(cols ^ wt[o]) for output channels lo..hi of one
    image, two at a time."""
    pixels = cols.shape[1]
    spare = np.empty(pixels, dtype=np.int32)  # the partner of an odd last channel
    for o in range(lo, hi, 2):
        p = o + 1 if o + 1 < hi else o
        oa, ca, cb = out[o].reshape(pixels), corr[o].reshape(pixels), corr[p].reshape(pixels)
        ob = out[p].reshape(pixels) if p > o else spare
        for q in range(pixels):
            oa[q] = k - ca[q]
            ob[q] = k - cb[q]
        _gemm_pair(cols, wt[o], wt[p], oa, ob)


@numba.njit(parallel=True, cache=True)
def _conv(x: np.ndarray, wt: np.ndarray, c: int, kh: int, kw: int, stride: int, pad: int,
          step: int, k: int, corr: np.ndarray, groups: int, out: np.ndarray) -> None:
    """out[b, o] = k - 2 popcount(windows(b) ^ wt[o]) - corr[o]; one task per (image, group of
    output channels). `x`: float (N, C, H, W) activations or (N, cw, H, W) words from `pack`."""
    n, oc, oh, ow = out.shape
    h, w = x.shape[2], x.shape[3]
    cw, nw, pixels = -(-c // 64), wt.shape[1], oh * ow
    hp, wp = (h + 2 * pad - 1) // step + 1, (w + 2 * pad - 1) // step + 1
    ones = _ones(c, cw)
    size = -(-oc // groups)
    size += size % 2  # channels go in pairs
    for r in numba.prange(n * groups):
        b, lo = r // groups, (r % groups) * size
        hi = min(oc, lo + size)
        if lo >= hi:
            continue
        px = np.empty((cw, hp, wp), dtype=np.uint64)
        _image_words(x[b], pad, step, ones, px)
        if kh * kw == 1 and stride == 1:  # a 1 x 1 window is the pixel's words
            cols = px.reshape((cw, pixels))
        else:
            cols = np.empty((nw, pixels), dtype=np.uint64)
            _window_image(px, c, kh, kw, stride, ow, cols)
        _channels(cols, wt, k, corr, lo, hi, out[b])


@numba.njit(parallel=True, cache=True)
def _pack(x: np.ndarray, ones: np.ndarray, out: np.ndarray) -> None:
    for b in numba.prange(x.shape[0]):
        _pack_image(x[b], 0, 1, ones, out[b])


def pack(x: np.ndarray) -> np.ndarray:
    """(N, ceil(C / 64), H, W) uint64: the sign bits of float (N, C, H, W) activations, a plane
    per word (channel c is bit c % 64 of word c // 64), packed once for any number of convs."""
    n, c, h, w = x.shape
    out = np.empty((n, -(-c // 64), h, w), dtype=np.uint64)
    _pack(np.ascontiguousarray(x, dtype=np.float32), _ones(c, out.shape[1]), out)
    return out


def conv(x: np.ndarray, wt: np.ndarray, c: int, kh: int, kw: int, stride: int, pad: int,
         k: int, corr: np.ndarray, packed: bool = False) -> np.ndarray:
    """(N, O, OH, OW) int32 XNOR-popcount products with +1 padding, minus `corr` (O, OH, OW),
    the padding correction (zeros without padding).

    `x`: (N, c, H, W) float32 activations, or with `packed` the (N, ceil(c / 64), H, W) uint64
    words of their signs from `pack`. `wt`: the weights' window words, (O, words) uint64 (as
    int64 bits)."""
    n, planes, h, w = x.shape
    if packed and x.dtype != np.uint64 or not packed and x.dtype != np.float32:
        raise ValueError(f"xnor: {'packed words' if packed else 'activations'} must be "
                         f"{'uint64' if packed else 'float32'}, got {x.dtype}")
    if planes != (-(-c // 64) if packed else c) or pad < 0 or stride < 1:  # no bounds checks
        raise ValueError(f"xnor: got {planes} input {'words' if packed else 'channels'} for {c} "
                         f"channels, padding {pad}, stride {stride}")
    step = stride if (kh, kw, pad) == (1, 1, 0) else 1  # a 1x1 conv reads every stride-th pixel
    stride //= step
    hp, wp = (h + 2 * pad - 1) // step + 1, (w + 2 * pad - 1) // step + 1
    oh, ow = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    wt = np.ascontiguousarray(wt).view(np.uint64)
    out = np.empty((n, wt.shape[0], oh, ow), dtype=np.int32)
    groups = max(1, -(-numba.get_num_threads() // n))
    _conv(np.ascontiguousarray(x), wt, c, kh, kw, stride, pad, step, k,
          np.ascontiguousarray(corr, dtype=np.int32), groups, out)
    return out


def set_threads(threads: int) -> None:
    """Threads of numba's parallel loops."""
    numba.set_num_threads(threads)
