"""benchmarks/bench_eval_forward.py runs every form of a committed checkpoint, checks they agree
with the fake-quant model and writes one ratio per form."""

import json
from pathlib import Path

import pytest
from benchmarks import bench_eval_forward as bench

NAME = "lbw_w2_resnet20_cifar10"


@pytest.mark.skipif(not (bench.CHECKPOINTS / f"{NAME}.safetensors").exists(),
                    reason="checkpoint not committed")
def test_smoke_run_writes_every_form(tmp_path: Path) -> None:
    out = tmp_path / "eval_forward.json"
    bench.main([NAME, "--batch", "2", "--threads", "1", "--repeats", "1", "--out", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    assert row["checkpoint"] == NAME
    assert set(row["ratio_vs_float"]) == {"fake-quant", "packed", "integer"}
    assert all(v > 0 for v in row["ratio_vs_float"].values())
