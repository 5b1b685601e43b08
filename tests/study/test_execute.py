"""Running a tiny plan: results, skip of finished runs, resume, identical across executors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lowbit.engine.trainer import Trainer
from lowbit.study.execute import dispatch, make_executor, run_plan, train_task
from lowbit.study.plan import expand, load_plan
from lowbit.study.tasks import run_task

from .conftest import tiny_plan

KEYS = ("id", "width", "bytes", "macs", "bops", "top1", "table")


def _essentials(results: list[dict]) -> list[tuple]:
    return [tuple(json.dumps(r[k], sort_keys=True) for k in KEYS) for r in results]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("seq")
    plan = load_plan(tiny_plan(tmp))
    return tmp, run_plan(plan, make_executor("local"))


def test_results_are_complete(sequential: tuple[Path, list[dict]]) -> None:
    tmp, results = sequential
    assert [r["id"] for r in results] == [r.id for r in expand(load_plan(tmp / "plan.yaml"))]
    for r in results:
        assert r["bytes"] == r["planned_bytes"]  # cost_report of the trained model = plan
        assert 0 <= r["top1"] <= 100 and (tmp / "results" / "runs" / f"{r['id']}.json").is_file()
    mixed = {r["kind"]: r for r in results if r["kind"] in ("greedy", "knapsack")}
    assert mixed["knapsack"]["bytes"] <= mixed["knapsack"]["target_bytes"]
    assert (tmp / "results" / "search-greedy-s0.json").is_file()


def test_rerun_skips_finished_runs(sequential: tuple[Path, list[dict]]) -> None:
    tmp, results = sequential
    stamps = {p: p.stat().st_mtime_ns for p in (tmp / "runs").rglob("*.safetensors")}
    again = run_plan(load_plan(tmp / "plan.yaml"), make_executor("local"))
    assert _essentials(again) == _essentials(results)
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp / "runs").rglob("*.safetensors")}


def test_killed_run_resumes_to_the_same_result(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    two = {"data": {"name": "synthetic", "batch_size": 32, "val_fraction": 0.25},
           "train": {"epochs": 2, "threads": 1, "progress": False}, "optim": {"lr": 0.05}}
    whole = load_plan(tiny_plan(tmp_path / "a", schedule=two, baselines=None))
    killed = load_plan(tiny_plan(tmp_path / "b", schedule=two, baselines=None))
    run = expand(whole)[1]
    full = run_task(train_task(whole, run))
    original = Trainer.train_epoch

    def crash(self: Trainer, epoch: int, *args: object) -> dict:
        if epoch == 1:  # after epoch 0's checkpoint was written
            raise RuntimeError("simulated kill")
        return original(self, epoch, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Trainer, "train_epoch", crash)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_task(train_task(killed, run))
    monkeypatch.undo()
    assert not (tmp_path / "b" / "results" / "runs" / f"{run.id}.json").exists()
    resumed = run_task(train_task(killed, run))
    assert resumed["top1"] == full["top1"] and resumed["epochs"] == 2
    rows = (tmp_path / "b" / "runs" / run.id / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2


@pytest.mark.slow
def test_processes_match_sequential(sequential: tuple[Path, list[dict]], tmp_path: Path) -> None:
    _, results = sequential
    parallel = run_plan(load_plan(tiny_plan(tmp_path)), make_executor("local", workers=2))
    assert _essentials(parallel) == _essentials(results)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_matches_sequential(sequential: tuple[Path, list[dict]], tmp_path: Path) -> None:
    import ray

    _, results = sequential
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = run_plan(load_plan(tiny_plan(tmp_path)), make_executor("ray"))
    finally:
        ray.shutdown()
    assert _essentials(got) == _essentials(results)


def test_changed_settings_are_not_skipped(sequential: tuple[Path, list[dict]],
                                          tmp_path: Path) -> None:
    tmp, _ = sequential
    plan = load_plan(tmp / "plan.yaml")
    plan.raw["schedule"]["optim"]["lr"] = 0.01
    with pytest.raises(ValueError, match="other settings"):
        run_task(train_task(plan, expand(plan)[1]))


def test_a_result_from_before_a_new_option_still_counts(sequential: tuple[Path, list[dict]]
                                                       ) -> None:
    """A result whose stored config lacks an option added since (at its default) is kept."""
    tmp, _ = sequential
    plan = load_plan(tmp / "plan.yaml")
    task = train_task(plan, expand(plan)[1])
    path = Path(task["result"])
    original = path.read_text()
    try:
        done = json.loads(original)
        del done["config"]["train"]["save_every_steps"]
        path.write_text(json.dumps(done))
        assert run_task(task)["top1"] == done["top1"]
    finally:
        path.write_text(original)


def test_dispatch_keeps_remote_results_here(tmp_path: Path) -> None:
    tasks = [{"kind": "search", "settings": {"k": i}, "result": str(tmp_path / f"{i}.json")}
             for i in range(3)]
    sent: list[list[dict]] = []

    def remote(batch: list[dict]) -> list[dict]:  # a cluster that writes nothing here
        sent.append(batch)
        return [{"settings": t["settings"], "value": t["settings"]["k"] * 10} for t in batch]

    (tmp_path / "1.json").write_text(json.dumps({"settings": {"k": 1}, "value": 99}))
    first = dispatch(remote, tasks)
    assert [r["value"] for r in first] == [0, 99, 20] and len(sent[0]) == 2
    assert dispatch(remote, tasks) == first and sent[1] == []
