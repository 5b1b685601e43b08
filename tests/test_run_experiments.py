"""benchmarks/run_experiments.py: which rows it starts, and with what, on CPU and on a GPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rx() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_experiments",
                                                  ROOT / "benchmarks" / "run_experiments.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_experiments"] = module
    spec.loader.exec_module(module)
    return module


def test_gpu_rows_train_on_cuda_at_the_longer_budget_and_record_apart(
        rx: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["experiments/inq/inq_w3_resnet20_cifar10.yaml",
            "experiments/gdrq/gdrq_w2a4_resnet20_cifar10.yaml"]
    assert rx.main([*rows, "--data-dir", "DATA", "--gpu", "--parallel", "4", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    inq, gdrq = out
    for line in out:
        assert "--set train.device=cuda" in line and "--results-dir benchmarks/results/gpu" in line
        assert "--checkpoints-dir benchmarks/checkpoints/gpu" in line and "/work" not in line
    assert "--set quant.epochs_per_step=10" in inq
    assert "--set quant.reshape_epochs=2 --set quant.quant_epochs=28" in gdrq


def test_cpu_rows_skip_what_is_recorded(rx: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = "experiments/baseline/resnet20_cifar10_float.yaml"  # its result is committed
    assert rx.main([recorded, "--data-dir", "DATA", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("skip   resnet20_cifar10_float")


def test_parallel_below_one_is_one_line(rx: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        rx.main(["experiments/qat", "--data-dir", "DATA", "--parallel", "0", "--dry-run"])
    assert exit_.value.code == 2 and "--parallel must be >= 1" in capsys.readouterr().err


def test_extra_overrides_and_record_folders_reach_every_run(
        rx: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    row = "experiments/qat/qat_w2a4_uniform_resnet20_cifar10.yaml"
    assert rx.main([row, "--data-dir", "DATA", "--gpu", "--dry-run", "--results-dir", "/r",
                    "--checkpoints-dir", "/c", "--set", "data.name=folder:sub"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert "--results-dir /r --checkpoints-dir /c" in line
    assert line.endswith("--set data.name=folder:sub")  # after the GPU budget: it wins


def test_the_deadline_stops_runs_in_flight_and_says_so_in_their_logs(
        rx: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeper = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    monkeypatch.setattr(rx, "command", lambda exp, args: (exp.stem, sleeper))
    rows = ["experiments/qat/qat_w2a4_uniform_resnet20_cifar10.yaml",
            "experiments/lbw/lbw_w4_resnet20_cifar10.yaml"]
    logs = tmp_path / "logs"
    assert rx.main([*rows, "--data-dir", "DATA", "--parallel", "1", "--deadline", "2",
                    "--logs", str(logs)]) == 0
    first = (logs / "qat_w2a4_uniform_resnet20_cifar10.log").read_text().splitlines()
    assert first == ["started", rx.STOPPED]
    assert not (logs / "lbw_w4_resnet20_cifar10.log").exists()  # never started
