"""Run directories belong to one run; resume works from any moment and validates what it reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowbit.api import _fresh_dir, train
from lowbit.build import load_run
from lowbit.cli import main
from lowbit.data import load_dataset
from lowbit.engine import Trainer
from lowbit.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lowbit.engine.rundir import RunDir, RunDirError
from lowbit.models import create_model
from support import CrashAt


def test_a_second_process_cannot_open_a_run_directory_in_use(tmp_path: Path) -> None:
    first = RunDir(tmp_path / "run")
    with pytest.raises(RunDirError, match=r"in use by pid \d+"):
        RunDir(tmp_path / "run", resume=True)
    first.close()
    RunDir(tmp_path / "run", resume=True).close()  # free again once the first one is done


def test_a_new_run_never_reuses_an_old_runs_directory(tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config(tmp_path, epochs=1)
    train(load_run(base=cfg), run_path=tmp_path / "run")
    rows = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match="already holds a run.*--resume"):
        train(load_run(base=cfg), run_path=tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == rows


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    stale = tmp_path / "run" / ".last.safetensors.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    RunDir(tmp_path / "run").close()
    assert not stale.exists()


def test_default_run_names_never_collide(tmp_path: Path, tiny_config) -> None:
    cfg = load_run(base=tiny_config(tmp_path)).cfg
    paths = {_fresh_dir(tmp_path, cfg) for _ in range(3)}
    assert len(paths) == 3 and all(p.is_dir() for p in paths)


def test_resume_before_the_first_save_starts_over(tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config(tmp_path, epochs=2)
    whole = train(load_run(base=cfg), run_path=tmp_path / "whole")
    killed = tmp_path / "killed"  # what a kill in epoch 1 leaves: config, run.json, a cut line
    RunDir(killed).write_config(load_run(base=cfg).cfg.to_dict())
    (killed / "metrics.jsonl").write_text('{"epoch": 0, "train_lo')
    assert main(["train", "--resume", str(killed)]) == 0
    a, _ = load_checkpoint(tmp_path / "whole" / "final.safetensors")
    b, _ = load_checkpoint(killed / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and whole["epochs"] == 2


def test_run_json_records_each_resume_with_its_commit(tmp_path: Path, tiny_config,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path, epochs=1)
    train(load_run(base=cfg), run_path=tmp_path / "run")
    monkeypatch.setattr("lowbit.engine.rundir.git_commit", lambda: "later")
    monkeypatch.setattr("sys.argv", ["lowbit", "train", "--resume", str(tmp_path / "run")])
    train(load_run(base=cfg), resume=tmp_path / "run")  # finished: only the end-of-fit work runs
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["commit"] != "later"  # where it started stays
    [resume] = info["resumes"]
    assert resume["commit"] == "later" and resume["epoch"] == 1
    assert resume["command"] == f"lowbit train --resume {tmp_path / 'run'}"


def test_resume_of_a_folder_that_is_no_run_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def _crashed_run(tmp_path: Path, tiny_config) -> tuple[Path, object]:
    cfg = load_run(base=tiny_config(tmp_path, epochs=3)).cfg
    model = create_model("small_cnn", num_classes=4, in_channels=3, width=0.25)
    trainer = Trainer(cfg, model, load_dataset("synthetic"), [CrashAt(1)], RunDir(tmp_path / "r"))
    with pytest.raises(RuntimeError, match="simulated"):
        trainer.fit()
    trainer.run_dir.close()
    return tmp_path / "r" / "last.safetensors", cfg


def _fresh_trainer(cfg, tmp_path: Path) -> Trainer:
    model = create_model("small_cnn", num_classes=4, in_channels=3, width=0.25)
    return Trainer(cfg, model, load_dataset("synthetic"), [CrashAt(-1)])


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t, m: t.pop("rng/torch"), "random-number-generator state"),
    (lambda t, m: t.update({"rng/torch": torch.zeros(3, dtype=torch.uint8)}), "random-number"),
    (lambda t, m: m.update(epoch=99), "epoch 99 is outside this run's schedule of 3"),
    (lambda t, m: m.update(epoch="1"), "epoch '1' is outside"),
    (lambda t, m: m.update(hooks=[]), "state for 0 methods, this run has 1"),
    (lambda t, m: m.pop("optim"), "no optimizer state"),
    (lambda t, m: t.update({"optim/0/momentum_buffer": torch.zeros(7)}), "has shape \\(7,\\)"),
    (lambda t, m: t.update({"optim/99/momentum_buffer": torch.zeros(7)}), "names no parameter"),
    (lambda t, m: m["optim"]["param_groups"].pop(), "parameter groups of"),
])
def test_resume_validates_what_it_loads(tmp_path: Path, tiny_config, edit, message: str) -> None:
    path, cfg = _crashed_run(tmp_path, tiny_config)
    tensors, meta = load_checkpoint(path)
    edit(tensors, meta)
    save_checkpoint(path, tensors, meta)
    with pytest.raises(CheckpointError, match=message):
        _fresh_trainer(cfg, tmp_path).resume(path)


def test_a_malformed_metrics_line_is_named_with_its_file(tmp_path: Path, tiny_config) -> None:
    path, cfg = _crashed_run(tmp_path, tiny_config)
    metrics = path.parent / "metrics.jsonl"
    metrics.write_text("not json\n" + metrics.read_text())
    trainer = _fresh_trainer(cfg, tmp_path)
    trainer.run_dir = RunDir(path.parent, resume=True)
    with pytest.raises(RunDirError, match=r"metrics.jsonl line 1 is not a JSON object"):
        trainer.resume(path)
