"""XNOR-popcount binary convolution equals the float convolution of the signs, exactly, for both
back ends, with padding, strides and 1x1 kernels; packing keeps the bits it should."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.kernels.xnor import (
    HAVE_NUMBA,
    PackedSigns,
    XnorConv,
    _xnor_numba,
    pack_activations,
    pack_signs,
    padding_correction,
    xnor_conv2d,
)

BACKENDS = ["torch", *(["numba"] if HAVE_NUMBA else [])]
SHAPES = [(16, 16, 8, 1, 1, 3), (16, 32, 8, 2, 1, 3), (32, 64, 6, 2, 0, 1), (64, 8, 5, 1, 1, 3),
          (128, 4, 4, 1, 1, 3), (8, 4, 7, 2, 1, 3), (32, 8, 7, 2, 0, 1),
          (128, 4, 5, 2, 0, 1), (16, 8, 6, 1, 0, 1), (16, 8, 7, 2, 1, 1)]


def signs(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("c", "o", "hw", "stride", "pad", "k"), SHAPES)
def test_xnor_conv_equals_float_conv_of_signs(backend: str, c: int, o: int, hw: int, stride: int,
                                              pad: int, k: int) -> None:
    gen = torch.Generator().manual_seed(c * o + hw)
    x, w = torch.randn(2, c, hw, hw, generator=gen), torch.randn(o, c, k, k, generator=gen)
    x[0, 0, 0, 0] = 0.0  # sign(0) = +1, as lowbit's Sign quantizer
    got = xnor_conv2d(x, w, stride, pad, backend)
    want = F.conv2d(signs(x), signs(w), stride=stride, padding=pad)
    assert got.dtype == torch.int32 and torch.equal(got.double(), want.double())


def test_pack_signs_bit_layout() -> None:
    x = -torch.ones(1, 70, 1, 1)
    x[0, [0, 3, 64, 69]] = 1.0
    words = pack_signs(x)[0, 0, 0]
    assert words.tolist() == [0b1001, 0b100001]


def test_padding_correction_is_the_border_sum() -> None:
    w = signs(torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0)))
    corr = padding_correction(w, 4, 4, 1, 1)
    # top-left output: padded taps are the first row and first column of the window
    want = w[:, :, 0, :].sum((1, 2)) + w[:, :, 1:, 0].sum((1, 2))
    assert torch.equal(corr[:, 0, 0], want.to(torch.int32))
    assert torch.equal(corr[:, 1, 1], torch.zeros(3, dtype=torch.int32))


def test_unsupported_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match="divide 64"):
        xnor_conv2d(torch.randn(1, 48, 4, 4), torch.randn(2, 48, 3, 3), 1, 1, "torch")


@settings(max_examples=25, deadline=None)
@given(c=st.sampled_from([1, 2, 8, 16, 32, 64, 128]), o=st.integers(1, 9),
       n=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7), stride=st.integers(1, 3),
       pad=st.integers(0, 2), kh=st.sampled_from([1, 2, 3]), kw=st.sampled_from([1, 3]),
       value=st.sampled_from([0, 1, -1]), seed=st.integers(0, 2**16))
def test_xnor_conv_property(c: int, o: int, n: int, h: int, w: int, stride: int, pad: int,
                            kh: int, kw: int, value: int, seed: int) -> None:
    """Equal to conv2d on signs for every shape, padding and padding value (0, +1, -1)."""
    if h + 2 * pad < kh or w + 2 * pad < kw:
        return
    gen = torch.Generator().manual_seed(seed)
    x, wt = torch.randn(n, c, h, w, generator=gen), torch.randn(o, c, kh, kw, generator=gen)
    padded = F.pad(signs(x), (pad,) * 4, value=float(value))
    want = F.conv2d(padded, signs(wt), stride=stride)
    for backend in BACKENDS:
        got = xnor_conv2d(x, wt, stride, pad, backend, value)
        assert torch.equal(got.double(), want.double())
        packed = XnorConv(wt, stride, pad, backend, value).packed(pack_activations(x, backend))
        assert torch.equal(packed.double(), want.double())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("k", "stride", "pad"), [(3, 2, 1), (3, 1, 3), (1, 2, 2), (1, 1, 1)])
@pytest.mark.parametrize("value", [1, -1])
def test_padding_values_on_strided_and_wide_borders(backend: str, k: int, stride: int, pad: int,
                                                    value: int) -> None:
    """+-1 padding with strides and padding wider than the kernel, float and packed input."""
    gen = torch.Generator().manual_seed(k * 10 + stride + pad)
    x, wt = torch.randn(2, 32, 6, 5, generator=gen), torch.randn(5, 32, k, k, generator=gen)
    want = F.conv2d(F.pad(signs(x), (pad,) * 4, value=float(value)), signs(wt), stride=stride)
    conv = XnorConv(wt, stride, pad, backend, value)
    assert torch.equal(conv(x).double(), want.double())
    assert torch.equal(conv.packed(pack_activations(x, backend)).double(), want.double())


def test_pad_value_outside_signs_is_refused() -> None:
    with pytest.raises(ValueError, match="pad_value"):
        XnorConv(torch.randn(4, 16, 3, 3), 1, 1, "torch", pad_value=2)


@pytest.mark.skipif(not HAVE_NUMBA, reason="needs numba (the `fast` extra)")
@pytest.mark.parametrize("groups", [1, 2, 3, 8])
def test_numba_output_channel_groups(groups: int) -> None:
    """Output channels split into groups (as with fewer images than threads), odd counts and
    empty groups included, give the same result."""
    gen = torch.Generator().manual_seed(groups)
    x, w = torch.randn(1, 16, 5, 5, generator=gen), torch.randn(7, 16, 3, 3, generator=gen)
    conv = XnorConv(w, 1, 1, "numba")
    out = np.empty((1, 7, 5, 5), dtype=np.int32)
    _xnor_numba._conv(x.numpy(), conv.wt.view(np.uint64), 16, 3, 3, 1, 1, 1, conv.k,
                      conv.correction(5, 5, 1).numpy(), groups, out)
    want = F.conv2d(signs(x), signs(w), padding=1)
    assert torch.equal(torch.from_numpy(out).double(), want.double())


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_input_channels_are_refused(backend: str) -> None:
    conv = XnorConv(torch.randn(4, 16, 3, 3), 1, 1, backend)
    with pytest.raises(ValueError, match="16"):
        conv(torch.randn(1, 32, 4, 4))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("c", "o", "hw", "stride", "pad", "k"), SHAPES)
def test_packed_once_equals_packing_inside(backend: str, c: int, o: int, hw: int, stride: int,
                                          pad: int, k: int) -> None:
    """Activations packed once (`pack_activations`) give every conv the product it computes
    from the float input, for both back ends, and both back ends pack the same bits."""
    gen = torch.Generator().manual_seed(c + o * hw)
    x, w = torch.randn(3, c, hw, hw, generator=gen), torch.randn(o, c, k, k, generator=gen)
    x[1, -1, -1, -1] = 0.0
    packed = pack_activations(x, backend)
    conv = XnorConv(w, stride, pad, backend)
    assert packed.words.shape == (3, -(-c // 64), hw, hw)
    assert torch.equal(packed.words, pack_activations(x, "torch").words)
    assert torch.equal(conv.packed(packed), conv(x))
    want = F.conv2d(signs(x), signs(w), stride=stride, padding=pad)
    assert torch.equal(conv.packed(packed).double(), want.double())


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_input_of_other_width_is_refused(backend: str) -> None:
    conv = XnorConv(torch.randn(4, 16, 3, 3), 1, 1, backend)
    with pytest.raises(ValueError, match="32 channels"):
        conv.packed(pack_activations(torch.randn(1, 32, 4, 4), backend))


@pytest.mark.parametrize("words", [torch.zeros(1, 1, 4, 4, dtype=torch.int32),
                                   torch.zeros(1, 2, 4, 4, dtype=torch.int64),
                                   torch.zeros(1, 4, 4, dtype=torch.int64)])
def test_malformed_packed_signs_are_refused(words: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="int64 words"):
        PackedSigns(words, 16)


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="numba, torch"):
        XnorConv(torch.randn(4, 16, 3, 3), 1, 1, "Numba")
    with pytest.raises(ValueError, match="numba, torch"):
        pack_activations(torch.randn(1, 16, 4, 4), "cuda")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 16, 5, 5), (1, 16, 1, 1), (16, 5, 5)])
def test_empty_or_too_small_inputs_are_refused(backend: str, shape: tuple[int, ...]) -> None:
    conv = XnorConv(torch.randn(4, 16, 3, 3), 1, 0, backend)
    with pytest.raises(ValueError, match="xnor"):
        conv(torch.randn(shape))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.int64, torch.uint8])
def test_signs_are_taken_in_the_input_dtype(backend: str, dtype: torch.dtype) -> None:
    """Tiny float64 negatives stay negative (float32 would round them to -0.0 >= 0), integer
    and unsigned inputs are values (unsigned: all +1), for both back ends."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 5, 5, generator=gen, dtype=torch.float64) * 1e-300
    x = x.to(dtype) if dtype.is_floating_point else torch.randint(-3, 4, x.shape).to(dtype)
    w = torch.randn(4, 16, 3, 3, generator=gen)
    want = F.conv2d(signs(x.double()).double(), signs(w).double(), padding=1)
    assert torch.equal(XnorConv(w, 1, 1, backend)(x).double(), want)
