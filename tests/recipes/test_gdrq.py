"""GDRQ: config checks, layer selection, per-group Scale-Clip, the two stages, resume, fold."""

import copy
import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.accounting import check_compliance
from lowbit.api import load_model, train
from lowbit.build import build_model, load_run
from lowbit.config import build_config
from lowbit.data import load_dataset
from lowbit.engine import LoopState, Trainer, recalibrate_bn
from lowbit.engine.rundir import RunDir
from lowbit.export.fold import FoldedConvBN, fold_bn
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quant import ScaleClip
from lowbit.recipes import base as recipe_base
from lowbit.recipes import gdrq as gdrq_module
from lowbit.recipes import parse_quant_section, quant_section
from lowbit.recipes.gdrq import RESHAPE, GDRQRecipe, resolve_group_size
from lowbit.schema import ConfigError


def gdrq(**kw: object) -> GDRQRecipe:
    recipe = parse_quant_section({"method": "gdrq", **kw})
    assert isinstance(recipe, GDRQRecipe)
    return recipe


def tiny_net(mid: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(mid, 4),
    )


@pytest.mark.parametrize(("bad", "message"), [
    ({"weight": {"bits": 1}}, "weight: scaleclip with signed=True supports bits 2..16, got 1"),
    ({"weight": {"bits": 17}}, "supports bits 2..16, got 17"),
    ({"weight": {"bits": 9}}, "weight.bits must be in 2..8 (codes fold into int8"),
    ({"act": {"bits": 9}}, "act.bits must be in 1..8, got 9"),
    ({"act": {"bits": 0}}, "act: scaleclip with signed=False supports bits 1..16, got 0"),
    ({"weight": {"k": 0.0}}, "weight: scaleclip k must be > 0"),
    ({"act": {"k": -1.0}}, "act: scaleclip k must be > 0"),
    ({"weight": {"group_size": -2}}, "group_size needs signed=True"),
    ({"act": {"momentum": 1.0}}, "momentum must be in"),
    ({"reshape_epochs": -1}, "reshape_epochs, quant_epochs and ramp_steps must be >= 0"),
    ({"ramp_steps": -5}, "reshape_epochs, quant_epochs and ramp_steps must be >= 0"),
    ({"weight": {"stat": "median"}}, "stat must be"),
    ({"weight": {"groups": 8}}, "groups"),
    ({"groups": 8}, "unknown config key 'quant.groups'"),
    ({"weight": {"name": "uniform", "bits": 2}}, "gdrq works with scaleclip weights"),
])
def test_bad_config(bad: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_quant_section({"method": "gdrq", **bad})


def test_defaults_schedule_and_lr_phases() -> None:
    section = quant_section(parse_quant_section({"method": "gdrq"}))
    w, a = section["weight"], section["act"]
    assert (w["bits"], a["bits"], w["k"], a["k"]) == (2, 4, 2.0, 14.0)
    assert (w["name"], w["signed"], a["name"], a["signed"]) == (
        "scaleclip", True, "scaleclip", False)
    assert section["keep_float"] == "first_last"
    recipe = gdrq(reshape_epochs=2, quant_epochs=5)
    assert recipe.fixed_epochs() == 7
    # two phases, the learning rate restarting with the second: reshape (epochs 0-1), quantize
    phases = recipe.phases()
    assert [(p.name, p.epochs, p.index, p.restart_lr) for p in phases] == [
        ("reshape", 2, 0, True), ("quantize", 5, 1, True)]
    assert [(p.name, p.epochs) for p in gdrq(reshape_epochs=0, quant_epochs=3).phases()] == [
        ("reshape", 0), ("quantize", 3)]
    run = load_run(base={"model": {"name": "small_cnn"}, "data": {"name": "synthetic"},
                         "quant": {"method": "gdrq", "reshape_epochs": 1, "quant_epochs": 4}})
    assert run.cfg.train.epochs == 5  # the engine runs both stages
    assert [p.epochs for p in run.phases] == [1, 4]


def test_layer_selection_and_quantizers() -> None:
    model = gdrq(act={"bits": 3}).prepare(tiny_net())
    assert type(model[0]) is nn.Conv2d and type(model[8]) is nn.Linear  # first/last stay float
    conv = model[3]
    assert isinstance(conv, QuantConv2d)
    wq, aq = conv.weight_quant, conv.act_quant
    assert isinstance(wq, ScaleClip) and isinstance(aq, ScaleClip)
    assert (wq.signed, wq.clip_k, wq.bits, wq.group_size) == (True, 2.0, 2, 8)
    assert (aq.signed, aq.clip_k, aq.bits, aq.momentum) == (False, 14.0, 3, 0.99)
    assert gdrq(act=None).prepare(tiny_net())[3].act_quant is None

    both = gdrq(keep_float="none").prepare(tiny_net())
    assert isinstance(both[0], QuantConv2d) and both[0].act_quant is None  # image input: float
    assert isinstance(both[0].weight_quant, ScaleClip)
    assert isinstance(both[8], QuantLinear) and isinstance(both[8].act_quant, ScaleClip)
    convs_only = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    convs_only = gdrq(keep_float="none").prepare(convs_only)
    assert isinstance(convs_only[0], QuantConv2d) and isinstance(convs_only[3], QuantConv2d)


def test_stage_one_clips_float_stage_two_quantizes() -> None:
    recipe = gdrq(reshape_epochs=1, quant_epochs=1, weight={"group_size": 4},
                  bn_recalibration_batches=0)
    model = recipe.prepare(tiny_net())
    reshape, quantize = recipe.phases()
    conv = model[3]
    w = conv.weight.detach()
    t = 2.0 * w.reshape(4, -1).abs().mean(1).repeat_interleave(4).view(-1, 1, 1, 1)
    for _ in range(2):  # idempotent
        recipe.on_phase_start(LoopState(model, epoch=0), reshape)
        assert recipe.stage == RESHAPE
        clipped = conv.quantized_weight()
        torch.testing.assert_close(clipped, torch.maximum(torch.minimum(w, t), -t))
        assert len(clipped[:4].unique()) > 3  # float values, not ternary
        x = torch.rand(2, 8, 6, 6) * 10
        assert len(conv.act_quant(x).unique()) > 16  # clipped float input, not 4-bit
    recipe.on_phase_start(LoopState(model, epoch=1), quantize)
    quantized = conv.quantized_weight()
    for g in range(4):  # ternary {-T_g, 0, T_g} per group
        values = quantized[4 * g:4 * g + 4].unique()
        assert len(values) <= 3 and torch.isclose(values.abs().max(), t[4 * g, 0, 0, 0])
    assert len(conv.act_quant(x).unique()) <= 16
    assert check_compliance(model).passed


def test_switch_on_ramp_blends_clip_and_quantized_in_training_only() -> None:
    """ramp_steps = 4: stage 2's steps 1..4 blend with m = 1/4 .. 1; eval is quantized."""
    recipe = gdrq(reshape_epochs=1, quant_epochs=1, ramp_steps=4, bn_recalibration_batches=0)
    model = recipe.prepare(tiny_net())
    reshape, quantize = recipe.phases()
    recipe.on_phase_start(LoopState(model, step=0), reshape)
    aq = model[3].act_quant
    x = torch.rand(2, 8, 6, 6) * 10
    aq.train()
    clipped = aq(x).detach()
    recipe.on_phase_start(LoopState(model, epoch=1, step=10), quantize)
    mixes = []
    for step in range(10, 16):
        mixes.append(aq.mix)
        recipe.after_step(LoopState(model, epoch=1, step=step))
    assert mixes == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    recipe.on_phase_start(LoopState(model, epoch=1, step=10), quantize)
    aq.eval()  # evaluation: fully quantized whatever the ramp
    quantized = aq(x).detach()
    aq.train()
    torch.testing.assert_close(aq(x), clipped + 0.25 * (quantized - clipped))
    # a resumed run (recipe state restored, then on_fit_start) continues the ramp
    again = gdrq(reshape_epochs=1, quant_epochs=1, ramp_steps=4, bn_recalibration_batches=0)
    copy_model = again.prepare(tiny_net())
    again.load_state_dict(*recipe.state_dict())
    again.on_fit_start(LoopState(copy_model, epoch=1, step=12))
    assert copy_model[3].act_quant.mix == 0.75
    recipe.on_fit_end(LoopState(model, epoch=2, step=11))
    assert aq.mix == 1.0


def test_ramp_stage_start_recalibrates_bn_fully_quantized(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The BN statistics re-estimated at stage 2's start are for the quantized forward that
    evaluation runs, not for the ramp's first blend."""
    seen: list[set[float]] = []
    recipe = gdrq(reshape_epochs=1, quant_epochs=1, ramp_steps=8, bn_recalibration_batches=2)
    model = recipe.prepare(tiny_net())
    monkeypatch.setattr(gdrq_module, "recalibrate_bn", lambda state, n: seen.append(
        {q.mix for q in recipe.quantizers if q.quantize}) or n)
    recipe.on_phase_start(_state(model, epoch=1), recipe.phases()[1])
    assert seen == [{1.0}] and {q.mix for q in recipe.quantizers} == {1 / 8}


def test_per_group_thresholds_differ_across_groups() -> None:
    model = gdrq(weight={"group_size": 4}).prepare(tiny_net())
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
    model = gdrq(act={"momentum": 0.5}).prepare(tiny_net())
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
    recipe = gdrq(weight={"group_size": 8})
    with caplog.at_level(logging.WARNING, logger="lowbit.recipes.gdrq"):
        model = recipe.prepare(tiny_net(mid=12))
    assert recipe.fallbacks == {"3": 6} and recipe.group_sizes == {"3": 6}
    assert "3: 6" in caplog.text
    assert model[3].weight_quant.group_size == 6
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    assert recipe.state_dict()[1]["fallbacks"] == {"3": 6}


def test_without_scale_clip_is_max_range_uniform() -> None:
    model = gdrq(scale_clip=False, weight={"group_size": 8}).prepare(tiny_net())
    conv = model[3]
    w = conv.weight.detach()
    group_max = w.reshape(2, -1).abs().amax(1).repeat_interleave(8)
    torch.testing.assert_close(conv.weight_quant.threshold(w), group_max)  # nothing clipped
    q = conv.quantized_weight()
    assert torch.equal(q.abs().amax(dim=(1, 2, 3)), group_max)
    assert (conv.act_quant.stat, conv.act_quant.clip_k) == ("max", 1.0)


def test_learnable_thresholds_start_at_the_statistic() -> None:
    model = gdrq(weight={"learnable": True, "group_size": 4}, act={"learnable": True}).prepare(
        tiny_net())
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
    base["quant"] = {"method": "gdrq", "reshape_epochs": 1, "quant_epochs": 2,
                     "weight": {"group_size": 4}}
    assert base["train"]["epochs"] == 3  # equal to the schedule's 1 + 2: allowed
    cfg = load_run(base=copy.deepcopy(base)).cfg
    full = train(load_run(base=copy.deepcopy(base)), run_path=tmp_path / "full")
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

    def trainer(run_name: str, hooks: list, resume: bool = False) -> Trainer:
        torch.manual_seed(cfg.train.seed)
        data = load_dataset("synthetic")
        run = load_run(base=copy.deepcopy(base))
        model = build_model(run, data.train.num_classes, data.train.in_channels)
        recipe = run.recipe
        return Trainer(run.cfg, model, data, [recipe, *hooks],
                       RunDir(tmp_path / run_name, resume=resume),
                       phases=recipe.phases())

    crashed = trainer("part", [crash_at(1)])  # dies at the stage boundary
    with pytest.raises(RuntimeError):
        crashed.fit()
    crashed.run_dir.close()  # a process that dies releases its run directory
    resumed = trainer("part", [crash_at(-1)], resume=True)
    resumed.resume(tmp_path / "part" / "last.safetensors")
    # restored from the callback state
    assert resumed.epoch == 1 and resumed.callbacks[0].stage == RESHAPE
    assert not any(q.quantize for q in resumed.callbacks[0].quantizers)
    resumed.fit()
    want_state = load_model(tmp_path / "full" / "final.safetensors")[0].state_dict()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, want_state[key]), key


class _RecalRecorder:
    """Wraps the real `recalibrate_bn`: records (epoch, batches used) of each calibration."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, state: LoopState, n: int) -> int:
        used = recalibrate_bn(state, n)
        if used:
            self.calls.append((state.epoch, used))
        return used


def _state(model: nn.Module, epoch: int = 0) -> LoopState:
    return LoopState(model, batches=lambda n: ((torch.randn(2, 3, 8, 8), torch.zeros(2))
                                               for _ in range(n)), epoch=epoch)


def test_bn_recalibration_at_each_stage_start_and_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rec = _RecalRecorder()
    monkeypatch.setattr(gdrq_module, "recalibrate_bn", rec)
    monkeypatch.setattr(recipe_base, "recalibrate_bn", rec)
    recipe = gdrq(reshape_epochs=1, quant_epochs=2, bn_recalibration_batches=7)
    model = recipe.prepare(tiny_net())
    state = _state(model)
    recipe.on_fit_start(state)
    start = 0
    for phase in recipe.phases():  # as the trainer drives it
        state.epoch = start
        recipe.on_phase_start(state, phase)
        for epoch in range(start, start + phase.epochs):
            state.epoch = epoch
            recipe.on_epoch_start(state)
        start += phase.epochs
    assert rec.calls == [(0, 7), (1, 7)]  # stage 1 start, stage 2 start, not epoch 2
    state.epoch = 3
    recipe.on_fit_end(state)
    assert rec.calls[2:] == [(3, 7)]  # the weights oscillated: re-estimate with the final ones
    for reshape in (0, 1):  # calibration-only or reshaping-only run: calibrate the quantized net
        rec.calls.clear()
        only = gdrq(reshape_epochs=reshape, quant_epochs=0, bn_recalibration_batches=7)
        state = _state(only.prepare(tiny_net()), epoch=reshape)
        only.on_fit_end(state)
        assert rec.calls == [(reshape, 7)] and only.stage == 2
    rec.calls.clear()
    off = gdrq(bn_recalibration_batches=0)
    state = _state(off.prepare(tiny_net()))
    for phase in off.phases():
        off.on_phase_start(state, phase)
    off.on_fit_end(state)
    assert rec.calls == []
    with pytest.raises(ConfigError):
        parse_quant_section({"method": "gdrq", "bn_recalibration_batches": -1})


def test_calibration_only_run_sets_bn_statistics_and_activation_clips(tmp_path: Path,
                                                                      tiny_config) -> None:
    """reshape_epochs = quant_epochs = 0 is post-training calibration: no weight moves, but BN
    statistics and every activation clip are estimated on the quantized forward."""
    base = tiny_config(tmp_path, epochs=2)
    train(build_config(base=base), run_path=tmp_path / "float")
    init = str(tmp_path / "float" / "final.safetensors")
    runs = {}
    for n in (0, 5):
        train_section = {k: v for k, v in base["train"].items() if k != "epochs"}
        cfg = {**base, "train": {**train_section, "init": init},
               "quant": {"method": "gdrq", "weight": {"group_size": 4},
                         "bn_recalibration_batches": n, "reshape_epochs": 0, "quant_epochs": 0}}
        train(load_run(base=cfg), run_path=tmp_path / f"cal{n}")
        runs[n] = load_model(tmp_path / f"cal{n}" / "final.safetensors")[0].state_dict()
    weights = [k for k in runs[0] if k.endswith(".weight")]
    assert all(torch.equal(runs[0][k], runs[5][k]) for k in weights)
    means = [k for k in runs[0] if k.endswith("running_mean")]
    assert means and all(not torch.equal(runs[0][k], runs[5][k]) for k in means)
    tracked = [k for k in runs[5] if k.endswith("act_quant.num_batches_tracked")]
    assert tracked and all(int(runs[5][k]) == 5 for k in tracked)
    assert all(int(runs[0][k]) == 0 for k in tracked)


@pytest.mark.parametrize("act_bits", [2, None])
def test_old_shape_section_migrates_to_the_same_recipe(
    act_bits: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    old = {"method": "gdrq", "weight_bits": 4, "act_bits": act_bits, "k_w": 4.0, "k_a": 4.0,
           "group_size": 4, "stat": "std", "momentum": 0.9, "learnable": False,
           "quantize_first_last": True, "reshape_epochs": 1, "quant_epochs": 3}
    act = None if act_bits is None else {"bits": act_bits, "k": 4.0, "stat": "std",
                                         "momentum": 0.9, "learnable": False}
    new = {"method": "gdrq", "weight": {"bits": 4, "k": 4.0, "group_size": 4, "stat": "std",
                                        "momentum": 0.9, "learnable": False},
           "act": act, "keep_float": "none", "reshape_epochs": 1, "quant_epochs": 3}
    with caplog.at_level(logging.WARNING, logger="lowbit.recipes.legacy"):
        migrated = parse_quant_section(old)
    assert "weight_bits" in caplog.text and "quantize_first_last" in caplog.text
    assert quant_section(migrated) == quant_section(parse_quant_section(new))
    a = migrated.prepare(tiny_net())
    b = parse_quant_section(new).prepare(tiny_net())
    assert repr(a) == repr(b) and isinstance(a[0], QuantConv2d)
    assert (a[3].act_quant is None) == (act_bits is None)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
