"""INQ: exact partition counts, frozen weights never move, resume mid-schedule, pruning."""

import copy
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
from lowbit.quant import functional as F
from lowbit.quant.inq import INQWeight
from lowbit.recipes import build_recipe, validate_quant_section
from lowbit.schema import ConfigError


def inq(**kw: object):  # noqa: ANN201
    return build_recipe(validate_quant_section({"method": "inq", **kw}))


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
        for _, layer, q in recipe.layers:
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
    before = {n: (q.mask.clone(), layer.weight.detach().clone()) for n, layer, q in recipe.layers}
    for _ in range(5):
        loss = model(torch.randn(4, 3, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        recipe.after_step(None)  # type: ignore[arg-type]
    moved = False
    for name, layer, q in recipe.layers:
        mask, w0 = before[name]
        assert torch.equal(layer.weight[mask], w0[mask]), name  # latent copy restored
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
def test_last_step_then_optional_bn_recalibration(batches: int) -> None:
    recipe = inq(bits=4, portions=[0.5, 1.0], bn_recalibration_batches=batches)
    recipe.prepare(tiny_net())

    class Recorder:
        calls: list[int] = []

        def recalibrate_bn(self, n: int) -> int:
            self.calls.append(n)
            return n

    trainer = Recorder()
    recipe.on_fit_end(trainer)  # type: ignore[arg-type]
    assert all(bool(q.mask.all()) for _, _, q in recipe.layers)  # last step done first
    assert trainer.calls == [batches]


def test_gradient_reaches_only_float_entries() -> None:
    q = INQWeight(bits=4)
    w = torch.randn(100, requires_grad=True)
    q.partition(w.detach(), 0.5)
    q(w).sum().backward()
    assert torch.equal(w.grad, (~q.mask).float())


def test_pruning_then_inq_keeps_pruned_zero() -> None:
    recipe = inq(bits=5, portions=[0.5, 1.0], prune_sparsity=0.6, prune_epochs=1)
    model = recipe.prepare(tiny_net())
    recipe.on_epoch_start(None, 0)  # type: ignore[arg-type]
    pruned = {n: q.mask.clone() for n, _, q in recipe.layers}
    for _, layer, q in recipe.layers:
        n = layer.weight.numel()
        assert int(q.mask.sum()) == round(0.6 * n)
    recipe._advance_to(1)
    for name, _, q in recipe.layers:
        assert torch.all(q.frozen[pruned[name]] == 0)
        assert q.mask.all()
    assert check_compliance(model).passed


def test_schedule_epochs_and_lr_phases() -> None:
    recipe = inq(portions=[0.5, 0.75, 1.0], epochs_per_step=3, prune_epochs=2, prune_sparsity=0.1)
    assert recipe.epochs() == 2 + 2 * 3
    assert recipe.phase(0, 8) == (0.0, 2)
    assert recipe.phase(2, 8) == (0.0, 3) and recipe.phase(4, 8) == (2.0, 3)
    assert recipe.phase(5, 8) == (0.0, 3)


@pytest.mark.parametrize(
    "bad",
    [
        {"portions": [0.5, 0.9]},
        {"portions": [0.6, 0.5, 1.0]},
        {"bits": 9},
        {"strategy": "biggest"},
        {"n1": "last"},
        {"bn_recalibration_batches": -1},
        {"epochs_per_step": -1},
    ],
)
def test_bad_config(bad: dict) -> None:
    with pytest.raises(ConfigError):
        validate_quant_section({"method": "inq", **bad})


def test_end_to_end_and_resume_mid_schedule(tmp_path: Path, tiny_config, crash_at) -> None:
    base = tiny_config(tmp_path, epochs=2)
    train(build_config(base=base), run_path=tmp_path / "float")
    quant = {
        **base,
        "quant": {"method": "inq", "bits": 4, "portions": [0.5, 0.75, 1.0], "epochs_per_step": 2},
    }
    quant["train"] = {**base["train"], "init": str(tmp_path / "float" / "final.safetensors")}
    cfg = build_config(base=quant)
    full = train(copy.deepcopy(cfg), run_path=tmp_path / "full")
    assert full["epochs"] == 4
    model, _ = load_model(tmp_path / "full" / "final.safetensors")
    assert check_compliance(model).passed

    def trainer(run: str, hooks: list) -> Trainer:
        torch.manual_seed(cfg.train.seed)
        data = load_dataset("synthetic")
        model, recipe = build_model(cfg, data)
        return Trainer(cfg, model, data, recipe.hooks() + hooks, RunDir(tmp_path / run))

    crashed = trainer("part", [crash_at(3)])  # dies inside INQ step 2 (epoch 3 of 4)
    with pytest.raises(RuntimeError):
        crashed.fit()
    resumed = trainer("part", [crash_at(-1)])
    resumed.resume(tmp_path / "part" / "last.safetensors")
    assert resumed.epoch == 3 and resumed.hooks[0].steps_done == 2
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
    for _, _, q in recipe.layers:
        assert q.mask.all()
    assert check_compliance(model).passed
