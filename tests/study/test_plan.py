"""Study plans: expansion, budgets, the dry-run table."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.schema import ConfigError
from lowbit.study.plan import expand, load_plan, parse_plan
from lowbit.study.size import model_size
from lowbit.study.solver import ZooFactory

from .conftest import tiny_plan

REPO = Path(__file__).resolve().parents[2]


def test_expand_ids_and_sizes(plan_path: Path) -> None:
    plan = load_plan(plan_path)
    runs = expand(plan)
    assert [r.id for r in runs] == ["float-s0", "b2-w1-s0", "b2-w2-s0", "b2-w4-s0",
                                    "b2-greedy-s0", "b2-knapsack-s0"]
    target = model_size(ZooFactory("small_cnn", 4, 3), 0.5, 2).total
    assert plan.budgets["b2"] == target
    for run in runs[1:4]:
        assert run.size == model_size(plan.factory, run.width, run.bits).total
        assert abs(run.size_error) < 0.01 and run.macs > 0 and run.bops > 0
    assert runs[2].width == 0.5  # the 2-bit run is the reference model itself
    assert runs[4].width is None and runs[4].size is None  # waits for its search


def test_seeds_per_budget(tmp_path: Path) -> None:
    path = tiny_plan(tmp_path, budgets=[{"name": "a", "bytes": 9000, "seeds": [0, 1]},
                                        {"name": "b", "like": {"bits": 1, "width": 0.5}}],
                     baselines=None)
    ids = [r.id for r in expand(load_plan(path))]
    assert ids.count("a-w1-s1") == 1 and "b-w1-s1" not in ids and "float-s1" in ids


@pytest.mark.parametrize(("change", "message"), [
    ({"bogus": 1}, "unknown plan key"), ({"baselines": {"haq": {}}}, "unknown baseline"),
    ({"budgets": [{"name": "x"}]}, "give bytes"),
    ({"baselines": {"greedy": {"tolerence": 1}}}, r"unknown greedy setting\(s\) \['tolerence'\]"),
    ({"baselines": {"knapsack": {"anchor": 4}}}, "unknown knapsack setting"),
    ({"baselines": {"greedy": {"reference": "best"}}}, "reference must be 'start' or 'float'"),
    ({"baselines": {"greedy": 5}}, "baselines.greedy: give a mapping of settings")])
def test_bad_plans(tmp_path: Path, change: dict, message: str) -> None:
    import yaml

    raw = yaml.safe_load(tiny_plan(tmp_path).read_text())
    with pytest.raises(ConfigError, match=message):
        parse_plan({**raw, **change})


def test_dry_run_prints_every_run(plan_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "plan", str(plan_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for run in expand(load_plan(plan_path)):
        assert run.id in out
    assert not (plan_path.parent / "runs").exists()  # nothing trained


@pytest.mark.parametrize("name", ["resnet20.yaml", "mobilenetv2.yaml"])
def test_real_plans_expand(name: str) -> None:
    plan = load_plan(REPO / "experiments" / "study" / name)
    runs = expand(plan)
    uniform = [r for r in runs if r.kind == "uniform"]
    assert {r.bits for r in uniform} == {1, 2, 4, 8}
    assert all(abs(r.size_error) <= r.extra["solver_step"] / 2 + 1e-12 for r in uniform)
    assert plan.raw["schedule"]["data"]["val_fraction"] > 0  # searches need held-out images


def test_plan_verb_runs_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_plan(tmp_path, baselines=None, bits=[2])
    assert main(["study", "plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "b2-w2-s0" in out and "top1" in out
    assert (tmp_path / "results" / "runs" / "b2-w2-s0.json").is_file()


def test_mixed_runs_resolve_within_budget() -> None:
    from lowbit.study.execute import resolve_mixed, search_tasks

    plan = load_plan(REPO / "experiments" / "study" / "resnet20.yaml")
    runs = {r.id: r for r in expand(plan)}
    knap, greedy = runs["b1-knapsack-s0"], runs["b1-greedy-s0"]
    searched = search_tasks(plan, [knap])["sensitivity-s0"]["searched"]
    assert len(searched) == 20  # 18 block convs + 2 shortcuts: all but the first and last
    # Made-up sensitivities: the deeper the layer, the more it suffers at low bits.
    sens = {n: {b: (i + 1) / b for b in (1, 2, 4, 8)} for i, n in enumerate(searched)}
    resolve_mixed(plan, knap, {"sensitivity-s0": {"sensitivity": sens}})
    assert knap.width == runs["b1-w4-s0"].width  # the anchor (4-bit) model's width
    assert knap.size <= plan.budgets["b1"] and knap.table is not None
    assert knap.table[searched[-1]] >= knap.table[searched[0]]
    bits = {n: (1 if i % 2 else 4) for i, n in enumerate(searched)}
    resolve_mixed(plan, greedy, {"greedy-s0": {"bits": {**knap.table, **bits}}})
    assert abs(greedy.size_error) <= greedy.extra["solver_step"] / 2 + 1e-12


def test_knapsack_counts_per_channel_scales_of_depthwise_ternary() -> None:
    """On MobileNetV2, 2-bit depthwise weights store a scale per channel (more than 4-bit with
    one scale): the knapsack must cost them so, or its table overshoots the budget."""
    from lowbit.study.execute import resolve_mixed, search_tasks

    plan = load_plan(REPO / "experiments" / "study" / "mobilenetv2.yaml")
    knap = {r.id: r for r in expand(plan)}["b2-knapsack-s0"]
    searched = search_tasks(plan, [knap])["sensitivity-s0"]["searched"]
    depthwise = [n for n in searched if ".conv.3" in n or n == "features.3.conv.0"]
    sens = {n: {b: (i + 1) / b for b in (1, 2, 4, 8)} for i, n in enumerate(searched)}
    sens.update({n: {1: 100.0, 2: 0.0, 4: 0.0, 8: 0.0} for n in depthwise})  # 1 bit hurts
    resolve_mixed(plan, knap, {"sensitivity-s0": {"sensitivity": sens}})
    assert knap.table is not None and knap.size is not None
    assert knap.size <= plan.budgets["b2"]
    assert knap.size > 0.99 * plan.budgets["b2"]  # and it uses the budget


def test_depthwise_ternary_reaches_every_quantizer_the_study_builds() -> None:
    """The per-channel rule reaches a training run's config and the searches' layer swaps."""
    from lowbit.models import create_model
    from lowbit.study.execute import train_task
    from lowbit.study.mixed import _set_bits
    from lowbit.study.size import depthwise_names, full_table, quant_rules
    from lowbit.transform import quantize_model

    plan = load_plan(REPO / "experiments" / "study" / "mobilenetv2.yaml")
    run = {r.id: r for r in expand(plan)}["b2-w2-s0"]
    rules = train_task(plan, run)["config"]["quant"]["rules"]
    assert rules[r"features\.4\.conv\.3"]["weight"] == {"name": "ternary", "per_channel": True}
    assert rules[r"features\.4\.conv\.0"]["weight"] == {"name": "ternary"}
    model = create_model("mobilenet_v2", width=0.35)
    model = quantize_model(model, quant_rules(full_table(model, 8), depthwise_names(model))).model
    for name, per_channel in (("features.4.conv.3", True), ("features.4.conv.0", False)):
        _set_bits(model, name, 2)
        assert model.get_submodule(name).weight_quant.per_channel is per_channel
