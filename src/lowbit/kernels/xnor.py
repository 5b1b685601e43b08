"""Binary convolution by XNOR and popcount on bit-packed signs.

For x, w in {-1, +1}^K, x . w = K - 2 * popcount(bits(x) XOR bits(w)) with bit 1 for +1. Inputs
are packed along channels, 64 per uint64 word, pixel by pixel (`pack_signs`: (N, H, W, words);
`PackedSigns`, the numba kernel: a plane per word, (N, words, H, W)); the taps of a
k x k window are concatenated into one bit string per output pixel (im2col on bits), so a
16-channel 3 x 3 window is 144 bits, three words, three XOR + popcount.

Padding: a zero-padded convolution of binary inputs sees 0 at the border, which is not a binary
value. The kernel pads with +1 instead (all-ones bits, so inputs stay binary) and subtracts the
exact contribution of those +1s, `corr[o, i, j] = sum of w[o, c, tap] over the padded taps of
output (i, j)`, computed once per layer and input size. The result equals
`conv2d(sign(x), sign(w), padding)` exactly, as int32. A convolution that pads its binary input
with a constant v in {-1, +1} instead (Group-Net, Bi-Real) is `XnorConv(..., pad_value=v)`: it
subtracts (1 - v) * corr, so +1 padding costs nothing and no padded copy of the input is made.

Activations can be packed once and fed to several convolutions (`pack_activations` ->
`PackedSigns`, `XnorConv.packed`): a downsampling block's input serves both its strided 3 x 3
conv and its 1 x 1 shortcut, one packing for two convs. `XnorConv(x)` on a float input packs
inside the kernel instead (per image, in cache).

Two back ends with the same packing: a numba kernel (the `fast` extra; LLVM's ctpop on uint64,
parallel over images and output channels) and a pure-PyTorch fallback (XOR on int64 words,
popcount by byte table) that needs nothing beyond torch. `xnor_conv2d` picks numba when it is
installed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from lowbit.kernels import _xnor_numba
except ImportError:  # numba (the `fast` extra) is optional
    _xnor_numba = None  # type: ignore[assignment]

HAVE_NUMBA = _xnor_numba is not None
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)


def pack_signs(x: Tensor) -> Tensor:
    """Bits of sign(x) (x >= 0 -> 1) packed along dim 1, 64 channels per int64 word, as
    (N, H, W, ceil(C / 64)); unused high bits are 0."""
    n, c, h, w = x.shape
    words = -(-c // 64)
    bits = (x >= 0).permute(0, 2, 3, 1).to(torch.int64)
    bits = F.pad(bits, (0, words * 64 - c)).view(n, h, w, words, 64)
    shifts = torch.arange(64, dtype=torch.int64)
    return (bits << shifts).sum(-1)  # bit 63 wraps to the sign bit: fine for XOR / popcount


def _im2col_bits(packed: Tensor, c: int, kh: int, kw: int, stride: int) -> Tensor:
    """(N, OH, OW, ceil(kh*kw*c / 64)) bit strings: the taps' c-bit chunks, tap after tap."""
    n, hp, wp, words = packed.shape
    oh, ow = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    taps = [packed[:, i:i + stride * oh:stride, j:j + stride * ow:stride]
            for i in range(kh) for j in range(kw)]
    if c % 64 == 0:
        return torch.cat(taps, dim=-1)
    if 64 % c:
        raise ValueError(f"xnor: channels must divide 64 or be a multiple of it, got {c}")
    per_word = 64 // c
    out = torch.zeros(n, oh, ow, -(-len(taps) // per_word), dtype=torch.int64)
    for t, tap in enumerate(taps):
        out[..., t // per_word] |= tap[..., 0] << ((t % per_word) * c)
    return out


def _popcount(words: Tensor) -> Tensor:
    """Set bits of the int64 words along the last dim, summed (byte table lookup)."""
    return _POPCOUNT[words.contiguous().view(torch.uint8).to(torch.int64)].sum(-1)


BACKENDS = ("numba", "torch")


def resolve_backend(backend: str | None) -> str:
    """`backend`, or numba when installed; ValueError for an unknown name, RuntimeError when
    numba is asked for and not installed."""
    name = backend or ("numba" if HAVE_NUMBA else "torch")
    if name not in BACKENDS:
        raise ValueError(f"xnor backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if name == "numba" and _xnor_numba is None:
        raise RuntimeError("xnor backend 'numba' needs the `fast` extra (pip install numba)")
    return name


@dataclass(frozen=True)
class PackedSigns:
    """The signs of (N, C, H, W) activations, packed once: `words` is (N, ceil(C / 64), H, W)
    int64, a plane per word, channel c in bit c % 64 of word c // 64 (bit 1 for x >= 0)."""

    words: Tensor
    channels: int

    def __post_init__(self) -> None:
        w = self.words
        if w.dtype != torch.int64 or w.dim() != 4 or self.channels < 1 or \
                w.shape[1] != -(-self.channels // 64):
            raise ValueError(f"xnor: packed signs of {self.channels} channels need (N, "
                             f"{-(-self.channels // 64)}, H, W) int64 words, got "
                             f"{tuple(w.shape)} {w.dtype}")

    def nhwc(self) -> Tensor:
        """The words as (N, H, W, ceil(C / 64)), `pack_signs`'s layout."""
        return self.words.permute(0, 2, 3, 1)


def pack_activations(x: Tensor, backend: str | None = None) -> PackedSigns:
    """`x`'s signs bit-packed once, for any number of `XnorConv.packed` calls.

    Args:
        x: (N, C, H, W) activations; x >= 0 counts as +1.
        backend: "numba", "torch" or None (numba if installed); both pack the same bits.
    """
    if x.dim() != 4:
        raise ValueError(f"xnor: activations must be (N, C, H, W), got shape {tuple(x.shape)}")
    if resolve_backend(backend) == "numba":
        assert _xnor_numba is not None  # resolve_backend checked it
        words = torch.from_numpy(_xnor_numba.pack(_signs32(x).numpy()).view(np.int64))
    else:
        words = pack_signs(x).permute(0, 3, 1, 2).contiguous()
    return PackedSigns(words, x.shape[1])


def _signs32(x: Tensor) -> Tensor:
    """x as float32 with its signs kept: float32 as is, anything else (float64, whose tiny
    negatives would round to -0.0, integer codes) as +-1."""
    x = x.detach()
    return x if x.dtype == torch.float32 else torch.where(x >= 0, 1.0, -1.0)


@functools.lru_cache(maxsize=16)
def _ones_words(channels: int) -> Tensor:
    """The words of a +1 pixel: the channel bits set, the unused high bits 0 (read only)."""
    return pack_signs(torch.ones(1, channels, 1, 1))[0, 0, 0]


def _pad_words(words: Tensor, pad: int, channels: int) -> Tensor:
    """(N, H, W, words) packed pixels with a border of `pad` +1 pixels (all channel bits set)."""
    n, h, w, nw = words.shape
    out = _ones_words(channels).expand(n, h + 2 * pad, w + 2 * pad, nw).clone()
    out[:, pad:pad + h, pad:pad + w] = words
    return out


@functools.lru_cache(maxsize=64)
def _padding_mask(h: int, w: int, pad: int) -> Tensor:
    mask = torch.ones(1, 1, h + 2 * pad, w + 2 * pad, dtype=torch.float64)
    mask[..., pad:pad + h, pad:pad + w] = 0
    return mask


def padding_correction(w_sign: Tensor, h: int, w: int, stride: int, pad: int) -> Tensor:
    """(O, OH, OW) int32: what padding with +1 instead of 0 adds to each output."""
    if pad == 0:
        return torch.zeros(0, dtype=torch.int32)
    mask = _padding_mask(h, w, pad).expand(1, w_sign.shape[1], -1, -1)
    return F.conv2d(mask, w_sign.double(), stride=stride)[0].round().to(torch.int32)


def pack_weights(w: Tensor) -> tuple[Tensor, int]:
    """(O, words) bit strings of sign(w) in the im2col order of `_im2col_bits`, and K."""
    o, c, kh, kw = w.shape
    cols = _im2col_bits(pack_signs(w), c, kh, kw, 1)
    return cols.reshape(o, -1), c * kh * kw


class XnorConv:
    """A binary convolution with its weights packed once: `XnorConv(w, ...)(x)` equals
    `conv2d(sign(x), sign(w), stride, padding)` as int32 (the padding correction is cached per
    input size)."""

    def __init__(self, w: Tensor, stride: int = 1, padding: int = 0,
                 backend: str | None = None, pad_value: int = 0) -> None:
        self.backend = resolve_backend(backend)
        if pad_value not in (-1, 0, 1):
            raise ValueError(f"xnor: pad_value must be -1, 0 or 1, got {pad_value}")
        self.out_channels, self.channels, self.kh, self.kw = w.shape
        if self.channels % 64 and 64 % self.channels:
            raise ValueError(f"xnor: channels must divide 64 or be a multiple of it, got "
                             f"{self.channels}")
        if stride < 1 or padding < 0:
            raise ValueError(f"xnor: stride must be >= 1 and padding >= 0, got {stride}, "
                             f"{padding}")
        self.stride, self.padding, self.pad_value = stride, padding, int(pad_value)
        self.sign = torch.where(w >= 0, 1, -1)
        self.wcols, self.k = pack_weights(w)
        self.wt = self.wcols.contiguous().numpy()
        self._corr: dict[tuple[int, int, int], Tensor] = {}

    @property
    def _corrects(self) -> bool:
        """Whether the kernel's +1 border differs from the padding asked for."""
        return bool(self.padding) and self.pad_value != 1

    def correction(self, h: int, w: int, stride: int) -> Tensor:
        """What the kernel's +1 padding adds to each output for an h x w input beyond padding
        with `pad_value`, (O, OH, OW) (cached)."""
        if (h, w, stride) not in self._corr:
            p = self.padding
            if self._corrects:
                corr = padding_correction(self.sign, h, w, stride, p) * (1 - self.pad_value)
            else:
                oh, ow = (h + 2 * p - self.kh) // stride + 1, (w + 2 * p - self.kw) // stride + 1
                corr = torch.zeros(self.out_channels, oh, ow, dtype=torch.int32)
            self._corr[h, w, stride] = corr
        return self._corr[h, w, stride]

    def __call__(self, x: Tensor) -> Tensor:
        """The product on float activations (only their signs count), (N, O, OH, OW) int32."""
        if x.dim() != 4:
            raise ValueError(f"xnor: activations must be (N, C, H, W), got shape "
                             f"{tuple(x.shape)}")
        n, c, h, w = x.shape
        self._check(n, c, h, w)
        if self.backend == "numba":
            return self._numba(_signs32(x).numpy(), h, w, packed=False)
        s = self._reads()
        return self._torch(pack_signs(x[:, :, ::s, ::s]), h, w)

    def packed(self, p: PackedSigns) -> Tensor:
        """The product on activations packed once by `pack_activations`, (N, O, OH, OW) int32."""
        n, _, h, w = p.words.shape
        self._check(n, p.channels, h, w)
        if self.backend == "numba":
            return self._numba(p.words.numpy().view(np.uint64), h, w, packed=True)
        s = self._reads()
        return self._torch(p.nhwc()[:, ::s, ::s], h, w)

    def _check(self, n: int, c: int, h: int, w: int) -> None:
        """ValueError unless the input has the weights' channels and fits the kernel."""
        if c != self.channels:
            raise ValueError(f"xnor: input has {c} channels, the weights {self.channels}")
        if n < 1 or h + 2 * self.padding < self.kh or w + 2 * self.padding < self.kw:
            raise ValueError(f"xnor: an input of {n} images of {h} x {w} pixels is empty or "
                             f"smaller than the {self.kh} x {self.kw} kernel with padding "
                             f"{self.padding}")

    def _reads(self) -> int:
        """Every how many pixels the conv reads one: its stride for a 1 x 1 conv without
        padding (only those pixels are packed or windowed), else 1."""
        return self.stride if (self.kh, self.kw, self.padding) == (1, 1, 0) else 1

    def _torch(self, words: Tensor, h: int, w: int) -> Tensor:
        """The PyTorch path on (N, H', W', words) packed pixels: every `_reads()`-th pixel of an
        h x w input."""
        stride = self.stride // self._reads()
        if self.padding:
            words = _pad_words(words, self.padding, self.channels)
        cols = _im2col_bits(words, self.channels, self.kh, self.kw, stride)
        # one image at a time bounds the (OH, OW, O, words) intermediate
        dot = torch.stack([(self.k - 2 * _popcount(c1.unsqueeze(-2) ^ self.wcols)).to(
            torch.int32) for c1 in cols]).permute(0, 3, 1, 2)
        return dot - self.correction(h, w, self.stride) if self._corrects else dot

    def _numba(self, x: np.ndarray, h: int, w: int, packed: bool) -> Tensor:
        """The numba kernel on float32 activations or packed words (it subtracts the padding
        correction itself)."""
        assert _xnor_numba is not None  # resolve_backend checked it
        return torch.from_numpy(_xnor_numba.conv(
            x, self.wt, self.channels, self.kh, self.kw, self.stride, self.padding, self.k,
            self.correction(h, w, self.stride).numpy(), packed))


def xnor_conv2d(x: Tensor, w: Tensor, stride: int = 1, padding: int = 0,
                backend: str | None = None, pad_value: int = 0) -> Tensor:
    """`conv2d(sign(x), sign(w), stride, padding)` as int32, by XNOR + popcount (the input
    padded with `pad_value`: 0, as conv2d, or -1 / +1).

    Args:
        x: (N, C, H, W) activations (only their signs are used; x >= 0 counts as +1).
        w: (O, C, kh, kw) weights (signs only); C must divide 64 or be a multiple of 64.
        backend: "numba", "torch" or None (numba if installed).
    """
    return XnorConv(w, stride, padding, backend, pad_value)(x).contiguous()


def set_threads(threads: int) -> None:
    """Threads of the numba kernel's parallel loop (no-op without numba)."""
    if _xnor_numba is not None:
        _xnor_numba.set_threads(threads)


def words_for(c: int, kh: int, kw: int) -> int:
    """How many 64-bit words one output pixel's window takes."""
    return math.ceil(c * kh * kw / 64) if 64 % c == 0 else kh * kw * (c // 64)


__all__ = ["BACKENDS", "HAVE_NUMBA", "PackedSigns", "XnorConv", "pack_activations",
           "pack_signs", "pack_weights", "padding_correction", "resolve_backend", "set_threads",
           "words_for", "xnor_conv2d"]
