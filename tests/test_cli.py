"""The command line: exit codes, one-line errors, JSON output."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit.cli import main
from support import tiny_run_args


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--set", "model.name=resnet99"], "unknown model 'resnet99'"),
        (["train", "--set", "train.epochs=-3"], "epochs must be >= 0"),
        (["train", "--set", "train.epochs=abc"], "expected int"),
        (["train", "--set", "train.epoch=3"], "did you mean"),
        (["train", "--config", "missing.yaml"], "not found"),
        (
            ["train", "--set", "data.name=cifar10", "--data-dir", "/nonexistent-dir"],
            "cifar10 not found",
        ),
        (["eval", "missing.safetensors"], "not found"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_dry_run_prints_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "train", "--set", "train.epochs=2", "--dry-run")
    assert code == 0 and "epochs: 2" in out and "name: resnet20" in out


def test_models_and_datasets(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "models")[1].split()[:1] != []
    assert "resnet20" in run_cli(capsys, "models")[1].split()
    assert "cifar10" in run_cli(capsys, "datasets")[1]


def test_train_then_eval_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code, out, _ = run_cli(
        capsys, "train", *tiny_run_args(train__epochs=2), "--run-dir", str(run), "--json"
    )
    assert code == 0
    trained = json.loads(out)
    code, out, _ = run_cli(capsys, "eval", str(run / "final.safetensors"), "--json")
    result = json.loads(out)
    assert code == 0
    assert {"top1", "top5", "model", "dataset"} <= result.keys()
    assert result["top1"] == trained["top1"] and result["dataset"] == "synthetic"


def test_console_script_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lowbit.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in result.stdout and "eval" in result.stdout
