"""GDRQ: config checks, layer selection, per-group Scale-Clip, the two stages, resume, fold."""

import copy
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.accounting import check_compliance
from lowbit.api import build_model, load_model, train
from lowbit.config import build_config
from lowbit.data import load_dataset
from lowbit.engine import Trainer
from lowbit.engine.rundir import RunDir
from lowbit.export.fold import FoldedConvBN, fold_bn
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quant import ScaleClip
from lowbit.recipes import build_recipe, validate_quant_section
from lowbit.recipes.gdrq import RESHAPE, GDRQRecipe, resolve_group_size
from lowbit.schema import ConfigError


def gdrq(**kw: object) -> GDRQRecipe:
    recipe = build_recipe(validate_quant_section({"method": "gdrq", **kw}))
    assert isinstance(recipe, GDRQRecipe)
    return recipe


def tiny_net(mid: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(mid, 4),
    )


@pytest.mark.parametrize("bad", [
    {"weight_bits": 1}, {"weight_bits": 9}, {"act_bits": 0}, {"k_w": 0.0}, {"k_a": -1.0},
    {"group_size": -2}, {"momentum": 1.0}, {"reshape_epochs": -1},
    {"stat": "max"}, {"groups": 8},
])
def test_bad_config(bad: dict) -> None:
    with pytest.raises(ConfigError):
        validate_quant_section({"method": "gdrq", **bad})


def test_defaults_schedule_and_lr_phases() -> None:
    section = validate_quant_section({"method": "gdrq"})
    assert (section["weight_bits"], section["act_bits"], section["k_w"], section["k_a"]) == (
        2, 4, 2.0, 14.0)
    recipe = gdrq(reshape_epochs=2, quant_epochs=5)
    assert recipe.epochs() == 7
    assert recipe.phase(0, 7) == (0.0, 2) and recipe.phase(1, 7) == (1.0, 2)
    assert recipe.phase(2, 7) == (0.0, 5) and recipe.phase(6, 7) == (4.0, 5)
    assert gdrq(reshape_epochs=0, quant_epochs=3).phase(0, 3) == (0.0, 3)
    cfg = build_config(base={"model": {"name": "small_cnn"}, "data": {"name": "synthetic"},
                             "quant": {"method": "gdrq", "reshape_epochs": 1, "quant_epochs": 4}})
    assert cfg.train.epochs == 5  # the engine runs both stages


def test_layer_selection_and_quantizers() -> None:
    model = gdrq(act_bits=3).prepare(tiny_net())
    assert type(model[0]) is nn.Conv2d and type(model[8]) is nn.Linear  # first/last stay float
    conv = model[3]
    assert isinstance(conv, QuantConv2d)
    wq, aq = conv.weight_quant, conv.act_quant
    assert isinstance(wq, ScaleClip) and isinstance(aq, ScaleClip)
    assert (wq.signed, wq.clip_k, wq.bits, wq.group_size) == (True, 2.0, 2, 8)
    assert (aq.signed, aq.clip_k, aq.bits, aq.momentum) == (False, 14.0, 3, 0.99)
    assert gdrq(act_bits=None).prepare(tiny_net())[3].act_quant is None

    both = gdrq(quantize_first_last=True).prepare(tiny_net())
    assert isinstance(both[0], QuantConv2d) and both[0].act_quant is None  # image input: float
    assert isinstance(both[0].weight_quant, ScaleClip)
    assert isinstance(both[8], QuantLinear) and isinstance(both[8].act_quant, ScaleClip)
    convs_only = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    convs_only = gdrq(quantize_first_last=True).prepare(convs_only)
    assert isinstance(convs_only[0], QuantConv2d) and isinstance(convs_only[3], QuantConv2d)


def test_stage_one_clips_float_stage_two_quantizes() -> None:
    recipe = gdrq(reshape_epochs=1, quant_epochs=1, group_size=4, bn_recalibration_batches=0)
    model = recipe.prepare(tiny_net())
    conv = model[3]
    w = conv.weight.detach()
    t = 2.0 * w.reshape(4, -1).abs().mean(1).repeat_interleave(4).view(-1, 1, 1, 1)
    for _ in range(2):  # idempotent
        recipe.on_epoch_start(None, 0)  # type: ignore[arg-type]
        assert recipe.stage == RESHAPE
        clipped = conv.quantized_weight()
        torch.testing.assert_close(clipped, torch.maximum(torch.minimum(w, t), -t))
        assert len(clipped[:4].unique()) > 3  # float values, not ternary
        x = torch.rand(2, 8, 6, 6) * 10
        assert len(conv.act_quant(x).unique()) > 16  # clipped float input, not 4-bit
    recipe.on_epoch_start(None, 1)  # type: ignore[arg-type]
    quantized = conv.quantized_weight()
    for g in range(4):  # ternary {-T_g, 0, T_g} per group
        values = quantized[4 * g:4 * g + 4].unique()
        assert len(values) <= 3 and torch.isclose(values.abs().max(), t[4 * g, 0, 0, 0])
    assert len(conv.act_quant(x).unique()) <= 16
    assert check_compliance(model).passed


def test_per_group_thresholds_differ_across_groups() -> None:
    model = gdrq(group_size=4).prepare(tiny_net())
    conv = model[3]
    with torch.no_grad():  # groups of very different scales
        conv.weight.mul_(torch.tensor([1.0, 3.0, 0.2, 7.0]).repeat_interleave(4).view(-1, 1, 1, 1))
    t = conv.weight_quant.threshold(conv.weight)
    assert t.shape == (16,)
    per_group = t.view(4, 4)
    assert torch.all(per_group == per_group[:, :1])  # one T per group
    assert len(per_group[:, 0].unique()) == 4
    expected = 2.0 * conv.weight.detach().reshape(4, -1).abs().mean(1)
    torch.testing.assert_close(per_group[:, 0], expected)
    step = conv.weight_quant.step(conv.weight)
    torch.testing.assert_close(step, t)  # W2: Delta = T / 1


def test_activation_ema_updates_in_train_frozen_in_eval() -> None:
    model = gdrq(momentum=0.5).prepare(tiny_net())
    aq = model[3].act_quant
    model.train()
    model(torch.randn(4, 3, 8, 8))
    first = aq.running_clip.clone()
    model(torch.randn(4, 3, 8, 8) * 4)
    second = aq.running_clip.clone()
    assert int(aq.num_batches_tracked) == 2 and second > first
    model.eval()
    model(torch.randn(4, 3, 8, 8) * 100)
    assert torch.equal(aq.running_clip, second) and int(aq.num_batches_tracked) == 2
    x = torch.rand(2, 8, 4, 4) * 1000
    assert torch.isclose(aq(x).max(), second)  # eval clips at the frozen EMA value


def test_group_size_fallback_is_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_group_size(8, 16) == 8 and resolve_group_size(8, 12) == 6
    assert resolve_group_size(8, 8) is None and resolve_group_size(8, 7) is None
    assert resolve_group_size(4, 7) == 1 and resolve_group_size(0, 16) is None
    assert resolve_group_size(None, 16) is None and resolve_group_size(1, 5) == 1
    recipe = gdrq(group_size=8)
    with caplog.at_level(logging.WARNING, logger="lowbit.recipes.gdrq"):
        model = recipe.prepare(tiny_net(mid=12))
    assert recipe.fallbacks == {"3": 6} and recipe.group_sizes == {"3": 6}
    assert "3: 6" in caplog.text
    assert model[3].weight_quant.group_size == 6
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    assert recipe.state_dict()[1]["fallbacks"] == {"3": 6}


def test_without_scale_clip_is_max_range_uniform() -> None:
    model = gdrq(scale_clip=False, group_size=8).prepare(tiny_net())
    conv = model[3]
    w = conv.weight.detach()
    group_max = w.reshape(2, -1).abs().amax(1).repeat_interleave(8)
    torch.testing.assert_close(conv.weight_quant.threshold(w), group_max)  # nothing clipped
    q = conv.quantized_weight()
    assert torch.equal(q.abs().amax(dim=(1, 2, 3)), group_max)
    assert (conv.act_quant.stat, conv.act_quant.clip_k) == ("max", 1.0)


def test_learnable_thresholds_start_at_the_statistic() -> None:
    model = gdrq(learnable=True, group_size=4).prepare(tiny_net())
    wq = model[3].weight_quant
    expected = 2.0 * model[3].weight.detach().reshape(4, -1).abs().mean(1)
    torch.testing.assert_close(wq.log_threshold.exp(), expected)
    assert any(p is wq.log_threshold for p in model.parameters())
    aq = model[3].act_quant  # materialised now (the trainer needs it), set by the first batch
    assert aq.log_threshold.shape == () and float(aq.log_threshold.detach()) == 0.0
    copy.deepcopy(model)(torch.randn(2, 3, 8, 8))  # a copy initialises itself, not `model`
    assert float(aq.log_threshold.detach()) == 0.0
    seen = {}
    model[3].register_forward_pre_hook(lambda _m, a: seen.setdefault("x", a[0].clone()))
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert wq.log_threshold.grad is not None and wq.log_threshold.grad.abs().sum() > 0
    assert aq.log_threshold.grad is not None
    torch.testing.assert_close(aq.log_threshold.exp(), 14.0 * seen["x"].abs().mean())
    before = aq.log_threshold.detach().clone()
    model(torch.randn(2, 3, 8, 8) * 10)  # later batches train it, never re-initialise it
    assert torch.equal(aq.log_threshold.detach(), before)


def test_end_to_end_compliance_fold_and_resume(tmp_path: Path, tiny_config, crash_at) -> None:
    base = tiny_config(tmp_path)
    base["quant"] = {"method": "gdrq", "reshape_epochs": 1, "quant_epochs": 2, "group_size": 4}
    cfg = build_config(base=base)
    full = train(copy.deepcopy(cfg), run_path=tmp_path / "full")
    assert full["epochs"] == 3
    model, _ = load_model(tmp_path / "full" / "final.safetensors")
    assert check_compliance(model).passed
    assert all(q.quantize for q in model.modules() if isinstance(q, ScaleClip))
    ref = copy.deepcopy(model).double().eval()
    folded = fold_bn(ref)
    assert sum(isinstance(m, FoldedConvBN) for m in folded.modules()) == 2
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        want, got = ref(x), folded(x)
    assert ((got - want).abs().max() / want.abs().max()) <= 1e-4

    def trainer(run: str, hooks: list) -> Trainer:
        torch.manual_seed(cfg.train.seed)
        data = load_dataset("synthetic")
        model, recipe = build_model(cfg, data)
        return Trainer(cfg, model, data, recipe.hooks() + hooks, RunDir(tmp_path / run))

    crashed = trainer("part", [crash_at(1)])  # dies at the stage boundary
    with pytest.raises(RuntimeError):
        crashed.fit()
    resumed = trainer("part", [crash_at(-1)])
    resumed.resume(tmp_path / "part" / "last.safetensors")
    assert resumed.epoch == 1 and resumed.hooks[0].stage == RESHAPE  # restored from hook state
    assert not any(q.quantize for q in resumed.hooks[0].quantizers)
    resumed.fit()
    want_state = load_model(tmp_path / "full" / "final.safetensors")[0].state_dict()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, want_state[key]), key


class _RecalRecorder:
    """Stands in for the Trainer: records recalibrate_bn calls, at a settable epoch."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch, self.calls = epoch, []  # type: ignore[var-annotated]

    def recalibrate_bn(self, n: int) -> int:
        self.calls.append((self.epoch, n))
        return n


def test_bn_recalibration_at_each_stage_start_and_after_a_calibration_only_run() -> None:
    recipe = gdrq(reshape_epochs=1, quant_epochs=2, bn_recalibration_batches=7)
    recipe.prepare(tiny_net())
    rec = _RecalRecorder()
    for epoch in range(3):
        rec.epoch = epoch
        recipe.on_epoch_start(rec, epoch)  # type: ignore[arg-type]
    assert rec.calls == [(0, 7), (1, 7)]  # stage 1 start, stage 2 start, not epoch 2
    rec.epoch = 3
    recipe.on_fit_end(rec)  # type: ignore[arg-type]
    assert len(rec.calls) == 2  # quantized epochs were trained: statistics are current
    for epoch in (0, 1):  # calibration-only or reshaping-only run: calibrate the quantized net
        rec = _RecalRecorder(epoch)
        recipe.on_fit_end(rec)  # type: ignore[arg-type]
        assert rec.calls == [(epoch, 7)] and recipe.stage == 2
    off = gdrq(bn_recalibration_batches=0)
    off.prepare(tiny_net())
    rec = _RecalRecorder()
    off.on_epoch_start(rec, 0)  # type: ignore[arg-type]
    off.on_fit_end(rec)  # type: ignore[arg-type]
    assert rec.calls == []
    with pytest.raises(ConfigError):
        validate_quant_section({"method": "gdrq", "bn_recalibration_batches": -1})


def test_calibration_only_run_sets_bn_statistics_and_activation_clips(tmp_path: Path,
                                                                      tiny_config) -> None:
    """reshape_epochs = quant_epochs = 0 is post-training calibration: no weight moves, but BN
    statistics and every activation clip are estimated on the quantized forward."""
    base = tiny_config(tmp_path, epochs=2)
    train(build_config(base=base), run_path=tmp_path / "float")
    init = str(tmp_path / "float" / "final.safetensors")
    runs = {}
    for n in (0, 5):
        cfg = {**base, "train": {**base["train"], "init": init},
               "quant": {"method": "gdrq", "group_size": 4, "bn_recalibration_batches": n,
                         "reshape_epochs": 0, "quant_epochs": 0}}
        train(build_config(base=cfg), run_path=tmp_path / f"cal{n}")
        runs[n] = load_model(tmp_path / f"cal{n}" / "final.safetensors")[0].state_dict()
    weights = [k for k in runs[0] if k.endswith(".weight")]
    assert all(torch.equal(runs[0][k], runs[5][k]) for k in weights)
    means = [k for k in runs[0] if k.endswith("running_mean")]
    assert means and all(not torch.equal(runs[0][k], runs[5][k]) for k in means)
    tracked = [k for k in runs[5] if k.endswith("act_quant.num_batches_tracked")]
    assert tracked and all(int(runs[5][k]) == 5 for k in tracked)
    assert all(int(runs[0][k]) == 0 for k in tracked)
