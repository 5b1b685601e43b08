"""Quantizers on edge inputs (issue 11) and under torch.compile (issue 12).

Every registered quantizer, in every float dtype: finite, on-grid output (decode(encode(x)) ==
forward(x), values among `levels(x)`) or a one-line ValueError; integer, bool and complex
tensors: a one-line TypeError. Under `torch._dynamo.explain`, no quantizer forward and no
W4A4 ResNet-20 breaks the graph.
"""

from __future__ import annotations

import math
from typing import Any

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from tests.quant.test_quant_properties import CONFIGS, config_id

from lowbit import quantize_model
from lowbit.models import create_model
from lowbit.quant import INQWeight, get_quantizer, list_quantizers

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ALL = [*CONFIGS, {"name": "inq", "bits": 5}, {"name": "inq", "bits": 3}]


def first_of_each_name() -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for cfg in ALL:
        seen.setdefault(cfg["name"], cfg)
    return list(seen.values())


# every name, plus the paths the first config of a name does not take
COMPILED = [*first_of_each_name(), {"name": "lbw", "bits": 3, "per_channel": True, "iters": 2},
            {"name": "uniform", "bits": 4, "signed": False, "clip": "ema"},
            {"name": "scaleclip", "bits": 4, "signed": False},
            {"name": "ternary", "per_channel": True}]


@pytest.mark.parametrize("cfg", ALL, ids=config_id)
@pytest.mark.parametrize("bad", [torch.int32, torch.int8, torch.bool, torch.complex64])
def test_non_float_dtypes_raise_one_line_type_error(cfg: dict[str, Any], bad: torch.dtype) -> None:
    q = get_quantizer(cfg)
    x = torch.ones(3, 4, dtype=bad)
    for call in (q, q.encode):
        with pytest.raises(TypeError, match=f"dtype {bad}") as err:
            call(x)
        assert "\n" not in str(err.value)


def test_sign_in_float16_stays_finite_beyond_256() -> None:
    x = torch.tensor([-1000.0, -300.0, -0.5, 0.0, 0.25, 300.0, 60000.0],
                     dtype=torch.float16, requires_grad=True)
    y = get_quantizer("sign")(x)
    y.backward(torch.ones_like(y))
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1] and torch.isfinite(x.grad).all()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 2.0, 1.5, 0.0, 0.0]


@pytest.mark.parametrize("name", ["uniform", "scaleclip", "lsq"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [8, 12, 13, 16])
def test_wide_uniform_levels_in_half_dtypes_are_exact_or_refused(name: str, dtype: torch.dtype,
                                                                 bits: int) -> None:
    q = get_quantizer({"name": name, "bits": bits, "signed": False})
    x = (torch.rand(64, 9, generator=torch.Generator().manual_seed(bits)) * 3).to(dtype)
    levels = 2**bits - 1
    if levels > round(2 / torch.finfo(dtype).eps):
        with pytest.raises(ValueError, match="exact integer levels"):
            q(x)
        return
    y = q(x)
    assert torch.isfinite(y).all() and torch.equal(q.decode(*q.encode(x)), y)


def test_lsq_on_all_zero_float64_and_inq_on_zero_size() -> None:
    x = torch.zeros(4, 5, dtype=torch.float64, requires_grad=True)
    q = get_quantizer({"name": "lsq", "bits": 4})
    y = q(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros_like(y)) and torch.isfinite(x.grad).all()
    assert torch.isfinite(q.step.grad) and float(q.step.detach()) > 0
    inq = INQWeight(bits=5)
    w = torch.zeros(0, 3, 3, 3)
    assert inq.partition(w, 0.5) == 0 and inq.frozen_fraction == 0.0
    assert inq(w).shape == w.shape


@pytest.mark.parametrize("r", [math.inf, -math.inf, math.nan, 0.0])
def test_lbw_rejects_non_finite_r(r: float) -> None:
    with pytest.raises(ValueError, match="finite r > 0"):
        get_quantizer({"name": "lbw", "bits": 4, "method": "threshold", "r": r})


# ----------------------------------------------------------------------------- fuzz
@st.composite
def inputs(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(FLOATS))
    shape = draw(st.sampled_from([(1,), (5,), (3, 4), (2, 3, 2, 2), (4, 1, 3, 3)]))
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0]))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    if draw(st.booleans()):
        x = x.relu()  # post-ReLU activations: zeros and one sign
    return x.to(dtype)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=inputs(), which=st.integers(0, len(ALL) - 1))
def test_fuzz_every_quantizer_over_dtypes_and_shapes(x: torch.Tensor, which: int) -> None:
    cfg = ALL[which]
    q = get_quantizer(cfg)
    if cfg["name"] == "inq":
        q.partition(x, 1.0)  # fully frozen: forward is the power-of-two codebook
    try:
        y = q(x)
    except ValueError as err:  # the only allowed refusal: levels the dtype cannot hold
        assert "exact integer levels" in str(err) and "\n" not in str(err)
        return
    assert y.dtype == x.dtype and y.shape == x.shape and torch.isfinite(y).all()
    q.eval()
    y = q(x)
    assert torch.equal(q.decode(*q.encode(x)), y)
    if cfg["name"] == "dorefa":
        return  # dorefa's levels are those of tanh(x)/max|tanh(x)|, checked in test_quant_*
    levels = q.levels(x)
    rows = y.reshape(levels.shape[0], -1) if levels.dim() == 2 else y.reshape(1, -1)
    table = levels if levels.dim() == 2 else levels.reshape(1, -1)
    for row, lev in zip(rows, table, strict=True):
        assert torch.isin(row, lev).all()


# ----------------------------------------------------------------------------- torch.compile
def graph_breaks(fn: Any, *args: torch.Tensor) -> list[str]:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    return [str(b.reason) for b in explanation.break_reasons]


def test_every_registered_name_is_fuzzed_and_compiled() -> None:
    assert {c["name"] for c in first_of_each_name()} == set(list_quantizers())


@pytest.mark.parametrize("cfg", COMPILED, ids=config_id)
def test_quantizer_forward_has_no_graph_breaks(cfg: dict[str, Any]) -> None:
    q = get_quantizer(cfg)
    x = torch.randn(8, 4, 3, 3)
    if cfg["name"] == "inq":
        q.partition(x, 0.5)
    q(x)  # initialise lazy / learned state eagerly, as the first training step would
    for mode in (True, False):
        q.train(mode)
        assert graph_breaks(q, x) == []


@pytest.mark.parametrize("train", [True, False])
def test_w4a4_resnet20_has_no_graph_breaks(train: bool) -> None:
    act = {"name": "uniform", "bits": 4, "signed": False, "clip": "learned", "clip_value": 4.0}
    model = quantize_model(create_model("resnet20", width=0.25),
                           weight={"name": "uniform", "bits": 4}, act=act).model
    model.train(train)
    # (a training step's loss.backward() is a graph boundary of its own in torch.compile)
    assert graph_breaks(model, torch.randn(2, 3, 16, 16)) == []
