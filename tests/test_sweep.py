import json
from pathlib import Path

import pytest

from lowbit.cli import main
from support import tiny_run_args


def test_sweep_picks_by_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sweep", *tiny_run_args(train__epochs=1), "--param", "optim.lr",
            "--values", "0.0001", "0.05", "--out", str(tmp_path), "--json"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [r["value"] for r in summary["rows"]] == [0.0001, 0.05]
    vals = {r["value"]: r["val_top1"] for r in summary["rows"]}
    assert summary["best_value"] == max(vals, key=vals.get)
    assert json.loads((tmp_path / "sweep.json").read_text())["best_value"] == summary["best_value"]
    row = json.loads((tmp_path / "optim.lr=0.05" / "metrics.jsonl").read_text().splitlines()[0])
    assert "val_top1" in row  # per-epoch metrics came from the held-out split


