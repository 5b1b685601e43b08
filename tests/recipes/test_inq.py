"""INQ: exact partition counts, frozen weights never move, resume mid-schedule, pruning."""

import copy
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.accounting import check_compliance
from lowbit.api import load_model, train
from lowbit.build import build_model, load_run
from lowbit.config import build_config
from lowbit.data import load_dataset
from lowbit.engine import LoopState, Phase, Trainer
from lowbit.engine.rundir import RunDir
from lowbit.quant import functional as F
from lowbit.quant.inq import INQWeight
from lowbit.recipes import base as recipe_base
from lowbit.recipes import parse_quant_section, quant_section
from lowbit.schema import ConfigError

WEIGHT_KEYS = ("bits", "strategy", "n1_mode")


def inq(**kw: object):  # noqa: ANN201
    """The INQ recipe; weight-quantizer keys (bits, strategy, n1_mode) go into `weight:`."""
    weight = {k: kw.pop(k) for k in WEIGHT_KEYS if k in kw}
    return parse_quant_section({"method": "inq", "weight": weight, **kw})


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


@pytest.mark.parametrize("strategy", ["magnitude", "random"])
def test_partition_freezes_exactly_round_sigma_n(strategy: str) -> None:
    recipe = inq(bits=4, portions=[0.3, 0.55, 0.8, 1.0], strategy=strategy)
    model = recipe.prepare(tiny_net())
    for step, sigma in enumerate([0.3, 0.55, 0.8, 1.0]):
        recipe._advance_to(step)
        for layer, q in recipe.layers:
            assert int(q.mask.sum()) == round(sigma * layer.weight.numel())
    assert check_compliance(model).passed


def test_magnitude_partition_takes_largest_first() -> None:
    q = INQWeight(bits=5)
    w = torch.randn(1000)
    q.partition(w, 0.25)
    frozen_abs, free_abs = w[q.mask].abs(), w[~q.mask].abs()
    assert frozen_abs.min() >= free_abs.max()


def test_frozen_values_are_eq4_levels_of_n1() -> None:
    q = INQWeight(bits=3)
    w = torch.randn(500) * 0.1
    q.partition(w, 1.0)
    n1 = F.pow2_top_exponent(float(w.abs().max()))
    assert int(q.n1) == n1
    assert torch.equal(q.frozen, F.pow2_quantize(w, 3, n1))


def test_frozen_weights_never_change_under_sgd_momentum_and_decay(tmp_path: Path) -> None:
    recipe = inq(bits=5, portions=[0.5, 1.0], epochs_per_step=1)
    model = recipe.prepare(tiny_net())
    recipe._advance_to(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    before = [(q.mask.clone(), layer.weight.detach().clone()) for layer, q in recipe.layers]
    for _ in range(5):
        loss = model(torch.randn(4, 3, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        recipe.after_step(LoopState(model, opt))
    moved = False
    for i, (layer, q) in enumerate(recipe.layers):
        mask, w0 = before[i]
        assert torch.equal(layer.weight[mask], w0[mask]), i  # latent copy restored
        assert torch.equal(q(layer.weight)[mask], q.frozen[mask])  # forward uses frozen
        moved |= not torch.equal(layer.weight[~mask], w0[~mask])
    assert moved  # the float half did train


@pytest.mark.parametrize(("mode", "n1_after"), [("per_step", 2), ("first", 0)])
def test_n1_recomputed_per_step_or_fixed(mode: str, n1_after: int) -> None:
    q = INQWeight(bits=5, n1_mode=mode)
    w = torch.tensor([1.0, 0.9, 0.1, 0.05])
    q.partition(w, 0.5)  # freezes 1.0 and 0.9 at 2^0: n1 = floor(log2(4/3)) = 0
    assert int(q.n1) == 0 and q.frozen[:2].tolist() == [1.0, 1.0]
    w[2:] = 3.0  # the float half outgrows 1.5 * 2^n1
    q.partition(w, 1.0)
    assert int(q.n1) == n1_after
    assert q.frozen[:2].tolist() == [1.0, 1.0]  # frozen values never move
    values = set(q.frozen.tolist())
    assert values <= set(q.levels(w).tolist())  # all in the (final) codebook


def test_per_step_n1_refused_when_it_would_drop_a_frozen_level() -> None:
    q = INQWeight(bits=2)  # ternary: the window is the single magnitude 2^n1
    w = torch.tensor([1.0, 0.1, 0.1, 0.1])
    q.partition(w, 0.25)
    w[1:] = 3.0  # recomputed n1 = 2 would make the frozen 1.0 unrepresentable
    q.partition(w, 1.0)
    assert int(q.n1) == 0 and q.frozen.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert set(q.frozen.tolist()) <= set(q.levels(w).tolist())


@pytest.mark.parametrize("batches", [0, 5])
def test_last_step_then_optional_bn_recalibration(
    batches: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = inq(bits=4, portions=[0.5, 1.0], bn_recalibration_batches=batches)
    model = recipe.prepare(tiny_net())
    calls: list[int] = []

    def recalibrate_bn(state: LoopState, n: int) -> int:
        assert all(bool(q.mask.all()) for _, q in recipe.layers)  # last step done first
        calls.append(n)
        return n

    monkeypatch.setattr(recipe_base, "recalibrate_bn", recalibrate_bn)
    recipe.on_fit_end(LoopState(model))
    assert all(bool(q.mask.all()) for _, q in recipe.layers)
    assert calls == [batches]


def test_gradient_reaches_only_float_entries() -> None:
    q = INQWeight(bits=4)
    w = torch.randn(100, requires_grad=True)
    q.partition(w.detach(), 0.5)
    q(w).sum().backward()
    assert torch.equal(w.grad, (~q.mask).float())


def test_pruning_then_inq_keeps_pruned_zero() -> None:
    recipe = inq(bits=5, portions=[0.5, 1.0], prune_sparsity=0.6, prune_epochs=1)
    model = recipe.prepare(tiny_net())
    recipe.on_fit_start(LoopState(model))
    pruned = [q.mask.clone() for _, q in recipe.layers]
    for layer, q in recipe.layers:
        n = layer.weight.numel()
        assert int(q.mask.sum()) == round(0.6 * n)
    recipe._advance_to(1)
    for i, (_, q) in enumerate(recipe.layers):
        assert torch.all(q.frozen[pruned[i]] == 0)
        assert q.mask.all()
    assert check_compliance(model).passed


def test_schedule_epochs_and_lr_phases() -> None:
    recipe = inq(portions=[0.5, 0.75, 1.0], epochs_per_step=3, prune_epochs=2, prune_sparsity=0.1)
    assert recipe.fixed_epochs() == 2 + 2 * 3
    phases = recipe.phases()
    assert [(p.name, p.epochs, p.index) for p in phases] == [
        ("prune", 2, 0), ("step 1/3", 3, 1), ("step 2/3", 3, 2)]
    # the learning-rate schedule restarts at epochs 0 (prune), 2 and 5 (each partition step)
    assert all(p.restart_lr for p in phases)
    assert [sum(p.epochs for p in phases[:i]) for i in range(3)] == [0, 2, 5]
    assert [p.name for p in inq(portions=[0.5, 1.0]).phases()] == ["step 1/2"]
    assert isinstance(phases[0], Phase)


@pytest.mark.parametrize(
    "bad",
    [
        {"portions": [0.5, 0.9]},
        {"portions": [0.6, 0.5, 1.0]},
        {"weight": {"bits": 9}},
        {"weight": {"strategy": "biggest"}},
        {"weight": {"n1_mode": "last"}},
        {"weight": {"name": "uniform", "bits": 4}},
        {"keep_float": "all"},
        {"bn_recalibration_batches": -1},
        {"epochs_per_step": -1},
    ],
)
def test_bad_config(bad: dict) -> None:
    with pytest.raises(ConfigError):
        parse_quant_section({"method": "inq", **bad})


def test_end_to_end_and_resume_mid_schedule(tmp_path: Path, tiny_config, crash_at) -> None:
    base = tiny_config(tmp_path, epochs=2)
    train(build_config(base=base), run_path=tmp_path / "float")
    quant = {
        **base,
        "quant": {"method": "inq", "weight": {"bits": 4}, "portions": [0.5, 0.75, 1.0],
                  "epochs_per_step": 2},
    }
    # INQ's schedule fixes the length (2 steps x 2 epochs): train.epochs is left unset
    train_section = {k: v for k, v in base["train"].items() if k != "epochs"}
    quant["train"] = {**train_section, "init": str(tmp_path / "float" / "final.safetensors")}
    cfg = load_run(base=copy.deepcopy(quant)).cfg
    assert cfg.train.epochs == 4
    full = train(load_run(base=copy.deepcopy(quant)), run_path=tmp_path / "full")
    assert full["epochs"] == 4
    model, _ = load_model(tmp_path / "full" / "final.safetensors")
    assert check_compliance(model).passed

    def trainer(run_name: str, hooks: list, resume: bool = False) -> Trainer:
        torch.manual_seed(cfg.train.seed)
        data = load_dataset("synthetic")
        run = load_run(base=copy.deepcopy(quant))
        model = build_model(run, data.train.num_classes, data.train.in_channels)
        recipe = run.recipe
        return Trainer(run.cfg, model, data, [recipe, *hooks],
                       RunDir(tmp_path / run_name, resume=resume),
                       phases=recipe.phases())

    crashed = trainer("part", [crash_at(3)])  # dies inside INQ step 2 (epoch 3 of 4)
    with pytest.raises(RuntimeError):
        crashed.fit()
    crashed.run_dir.close()  # a process that dies releases its run directory
    resumed = trainer("part", [crash_at(-1)], resume=True)
    resumed.resume(tmp_path / "part" / "last.safetensors")
    assert resumed.epoch == 3 and resumed.callbacks[0].steps_done == 2
    resumed.fit()
    ref = load_model(tmp_path / "full" / "final.safetensors")[0].state_dict()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, ref[key]), key


def test_channels_last_model() -> None:
    """The engine converts models to channels_last; INQ's buffers follow and must still work."""
    recipe = inq(bits=4, portions=[0.5, 1.0])
    model = recipe.prepare(tiny_net()).to(memory_format=torch.channels_last)
    for step in range(2):
        recipe._advance_to(step)
    for _, q in recipe.layers:
        assert q.mask.all()
    assert check_compliance(model).passed


def test_train_epochs_conflicting_with_the_schedule_is_an_error(tmp_path: Path,
                                                                 tiny_config) -> None:
    section = {"method": "inq", "portions": [0.5, 1.0], "epochs_per_step": 2}
    base = {**tiny_config(tmp_path, epochs=3), "quant": section}
    with pytest.raises(ConfigError, match="train.epochs=3"):
        load_run(base=base)
    base["train"]["epochs"] = 2  # equal to the schedule's length: fine
    assert load_run(base=base).cfg.train.epochs == 2


def test_old_shape_section_migrates_to_the_same_recipe(caplog: pytest.LogCaptureFixture) -> None:
    old = {"method": "inq", "bits": 3, "strategy": "random", "n1": "first",
           "skip_first_last": True, "portions": [0.5, 1.0]}
    new = {"method": "inq", "weight": {"name": "inq", "bits": 3, "strategy": "random",
                                       "n1_mode": "first"},
           "keep_float": "first_last", "portions": [0.5, 1.0]}
    with caplog.at_level(logging.WARNING, logger="lowbit.recipes.legacy"):
        migrated = parse_quant_section(old)
    assert "skip_first_last" in caplog.text
    assert quant_section(migrated) == quant_section(parse_quant_section(new))
    assert migrated.cfg.keep_float == "first_last"
    a, b = migrated.prepare(tiny_net()), parse_quant_section(new).prepare(tiny_net())
    assert repr(a) == repr(b) and type(a[0]) is nn.Conv2d  # first conv float
    # the default (skip_first_last false) quantizes every layer
    assert parse_quant_section({"method": "inq", "skip_first_last": False}).cfg.keep_float == "none"
    assert parse_quant_section({"method": "inq"}).cfg.keep_float == "none"
