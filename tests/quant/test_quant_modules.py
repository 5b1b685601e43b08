"""Module-level behaviour of the quantizers: state, modes, options, errors, registry."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.quant import (
    LBW,
    LSQ,
    Binary,
    DoReFa,
    Pow2,
    ScaleClip,
    Sign,
    Ternary,
    Uniform,
    get_quantizer,
)
from lowbit.quant import functional as F


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- registry
def test_registry_errors_are_clear() -> None:
    with pytest.raises(LowbitError, match="unknown quantizer 'nope'; choose one of binary"):
        get_quantizer("nope")
    with pytest.raises(LowbitError, match="quantizer ternary takes no argument 'colour'; it "
                                          "takes bits, per_channel$"):
        get_quantizer({"name": "ternary", "colour": 1})
    with pytest.raises(LowbitError, match="no argument 'rr'.*did you mean 'r'"):
        get_quantizer({"name": "lbw", "rr": 1.0})


@pytest.mark.parametrize(("cfg", "match"), [
    ({"name": "ternary", "bits": 3}, "ternary supports bits 2, got 3"),
    ({"name": "pow2", "bits": 9}, "pow2 supports bits 2..8"),
    ({"name": "lbw", "bits": 9}, "lbw supports bits 2..8"),
    ({"name": "lbw", "method": "magic"}, "lbw method must be"),
    ({"name": "uniform", "bits": 1}, "signed=True supports bits 2..16"),
    ({"name": "uniform", "clip": "p99"}, "uniform clip must be one of"),
    ({"name": "scaleclip", "signed": False, "group_size": 4}, "group_size needs signed=True"),
    ({"name": "sign", "bits": 2}, "sign supports bits 1"),
])
def test_bad_configs_raise(cfg: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_quantizer(cfg)


# ----------------------------------------------------------------------------- weight quantizers
def test_per_channel_levels_have_one_row_per_channel() -> None:
    w = randn(5, 3, 3, 3) * (10.0 ** torch.arange(5)).view(5, 1, 1, 1)
    for q, width in [(Ternary(per_channel=True), 3), (Binary(per_channel=True), 2),
                     (LBW(bits=4, per_channel=True), 15)]:
        levels = q.levels(w)
        assert levels.shape == (5, width)
        assert torch.all(levels[1:, -1] > levels[:-1, -1])  # scales follow the channel spread


def test_binary_is_group_net_eq1() -> None:
    w = randn(4, 8)
    torch.testing.assert_close(Binary()(w), torch.where(w >= 0, 1.0, -1.0) * w.abs().mean())
    assert Binary()(torch.tensor([0.0, 2.0])).tolist() == [1.0, 1.0]  # sign(0) = +1
    codes, scale = Binary().encode(torch.tensor([-3.0, 0.0, 1.0]))
    assert codes.tolist() == [-1, 1, 1] and Binary().code_range().tolist() == [-1, 1]  # 1 bit
    assert torch.equal(Binary().decode(codes, scale), torch.tensor([-4.0, 4.0, 4.0]) / 3)


def test_pow2_levels_and_zero_tensor() -> None:
    w = torch.tensor([0.9, -0.2, 0.05])  # n1 = 0; bits 3 -> {0, ±1/2, ±1}
    assert Pow2(bits=3).levels(w).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert Pow2(bits=3)(w).tolist() == [1.0, 0.0, 0.0]
    assert Pow2(bits=3).levels(torch.zeros(3)).tolist() == [0.0]


def test_lbw_b3_level_set_is_alpha_times_0_1_2_4() -> None:
    w = randn(1000)
    levels = LBW(bits=3).levels(w)
    alpha = levels[-1] / 4
    torch.testing.assert_close(levels / alpha, torch.tensor([-4.0, -2, -1, 0, 1, 2, 4]))


def test_dorefa_weights() -> None:
    w = randn(3, 7)
    t = torch.tanh(w) / torch.tanh(w).abs().max()
    expected = 2 * torch.round((t / 2 + 0.5) * 3) / 3 - 1  # spec §8.1, k = 2
    torch.testing.assert_close(DoReFa(bits=2)(w), expected)
    torch.testing.assert_close(DoReFa(bits=1)(w), Binary()(w))


# ----------------------------------------------------------------------------- uniform
def test_uniform_fixed_clip_is_group_net_eq2() -> None:
    a = torch.linspace(-0.5, 1.5, 41)
    beta, k = 1.0, 2
    expected = beta * torch.round((2**k - 1) * a.clamp(0, beta) / beta) / (2**k - 1)
    q = Uniform(bits=k, signed=False, clip="fixed", clip_value=beta)
    torch.testing.assert_close(q(a), expected)


def test_uniform_ema_tracks_max_and_freezes_in_eval() -> None:
    q = Uniform(bits=4, signed=False, clip="ema", momentum=0.9)
    q.train()
    q(torch.tensor([0.0, 2.0]))
    assert float(q.running_clip) == 2.0  # first batch initialises
    q(torch.tensor([0.0, 4.0]))
    assert float(q.running_clip) == pytest.approx(0.9 * 2 + 0.1 * 4)
    q.eval()
    q(torch.tensor([0.0, 100.0]))
    assert float(q.running_clip) == pytest.approx(2.2)
    assert set(q.state_dict()) == {"running_clip", "num_batches_tracked"}
    fresh = Uniform(bits=4, signed=False, clip="ema", momentum=0.9)
    fresh.load_state_dict(q.state_dict())
    x = torch.rand(10) * 3
    assert torch.equal(fresh.eval()(x), q(x))


# ----------------------------------------------------------------------------- scale-clip
def test_scaleclip_groups_and_step_for_bn_folding() -> None:
    w = randn(8, 4, 3, 3) * torch.tensor([1, 1, 5, 5, 1, 1, 9, 9.0]).view(8, 1, 1, 1)
    q = ScaleClip(bits=3, group_size=2)
    step = q.step(w)
    assert step.shape == (8,)
    assert torch.equal(step[0::2], step[1::2])  # constant within each group
    t = torch.stack([2 * w[i: i + 2].abs().mean() for i in range(0, 8, 2)]).repeat_interleave(2)
    torch.testing.assert_close(step, t / 3)  # Delta = T / (2^(b-1) - 1)
    codes, scale = q.encode(w)
    assert torch.equal(codes * F.channel_view(scale, w), q(w))
    with pytest.raises(ValueError, match="group_size 3 must divide the 8 output channels"):
        ScaleClip(group_size=3)(w)


def test_scaleclip_clip_only_mode() -> None:
    w = randn(4, 10)
    q = ScaleClip(quantize=False, k=1.5)
    t = 1.5 * w.abs().mean()
    torch.testing.assert_close(q(w), w.clamp(-t, t))
    with pytest.raises(ValueError, match="only clips"):
        q.levels(w)


def test_scaleclip_activation_ema() -> None:
    q = ScaleClip(bits=4, signed=False)  # k = 3, momentum 0.99
    a1, a2 = torch.rand(2, 3, 4, 4), 3 * torch.rand(2, 3, 4, 4)
    q.train()
    q(a1)
    torch.testing.assert_close(q.running_clip, 3 * a1.abs().mean())
    q(a2)
    expected = 0.99 * 3 * a1.abs().mean() + 0.01 * 3 * a2.abs().mean()
    torch.testing.assert_close(q.running_clip, expected)
    frozen = q.running_clip.clone()
    q.eval()
    q(10 * a2)
    assert torch.equal(q.running_clip, frozen)
    assert "running_clip" in q.state_dict()


def test_scaleclip_learnable_threshold() -> None:
    w = randn(4, 6) * torch.tensor([1.0, 1, 4, 4]).view(4, 1)
    q = ScaleClip(bits=2, group_size=2, learnable=True)
    wg, g = w.clone().requires_grad_(True), randn(4, 6, seed=2)
    q(wg).backward(g)
    expected = torch.stack([2 * w[:2].abs().mean(), 2 * w[2:].abs().mean()]).log()
    torch.testing.assert_close(q.log_threshold.detach(), expected)
    assert torch.equal(wg.grad, g)  # weights: identity STE
    # PACT rule through T = exp(log_threshold): dT/dlog = T, dQ/dT = 1[w >= T] - 1[w <= -T]
    t = expected.exp().repeat_interleave(2).view(4, 1)
    pact = (g * ((w >= t).float() - (w <= -t).float())).view(2, -1).sum(dim=1)
    assert pact.abs().min() > 0  # the data does reach the clip in both groups
    torch.testing.assert_close(q.log_threshold.grad, pact * expected.exp())
    fresh = ScaleClip(bits=2, group_size=2, learnable=True)  # loads before any forward
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(w), q(w))


# ----------------------------------------------------------------------------- LSQ, sign
def test_lsq_initial_step_and_state() -> None:
    x = randn(16, 8)
    q = LSQ(bits=4, signed=True)
    q(x)
    torch.testing.assert_close(q.step.detach(), 2 * x.abs().mean() / 7**0.5)
    assert bool(q.initialized)
    fresh = LSQ(bits=4, signed=True)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x), q(x))


def test_sign_forward() -> None:
    x = torch.tensor([-0.3, 0.0, 2.0])
    assert Sign()(x).tolist() == [-1.0, 1.0, 1.0]
