"""Smoke tests of the quantizer benchmark scripts (they are scripts, not timed tests)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quant_error_on_random_weights(tmp_path: Path) -> None:
    out = tmp_path / "quant_error_random.json"
    result = load("bench_quant_error").main(["--random", "--bits", "2", "3", "4",
                                             "--out", str(out)])
    assert json.loads(out.read_text())["figures"] == result["figures"]
    assert result["source"].startswith("random Gaussian")
    err = {(r["method"], r["bits"]): r["rel_sq_err_pooled"] for r in result["figures"]}
    assert err[("ternary exact", 2)] <= err[("twn", 2)]  # exact is optimal
    assert err[("ternary exact", 2)] == pytest.approx(0.191, abs=0.005)  # spec §4.3
    assert err[("lbw alternating", 3)] < err[("pow2 (INQ)", 3)]  # LBW fits its scale
    assert err[("uniform max", 4)] < err[("uniform max", 3)] < err[("uniform max", 2)]
    assert ("lbw alternating", 2) not in err  # b=2 is the exact ternary row


def test_quant_error_random_writes_nothing_by_default(tmp_path: Path, monkeypatch) -> None:
    module = load("bench_quant_error")
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    module.main(["--random", "--bits", "2"])
    assert list(tmp_path.iterdir()) == []


def test_ternary_speed_script_records_provenance(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    load("bench_ternary").main(["--sizes", "5000", "--repeats", "3", "--threads", "1",
                                "--per-channel-rows", "10", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"command", "commit", "date", "machine", "figures", "wall_clock_s"} <= set(result)
    assert [(f["rows"], f["threads"]) for f in result["figures"]] == [(1, 1), (10, 1)]
    assert all(f["ratio_of_medians"] > 0 for f in result["figures"])
