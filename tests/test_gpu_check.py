"""benchmarks/gpu_check.py: how a GPU session's runs are summarised and what comes back."""

from __future__ import annotations

import importlib.util
import json
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_each_run_is_ok_failed_stopped_or_not_run(gc: ModuleType, tmp_path: Path) -> None:
    results, logs = tmp_path / "results", tmp_path / "logs"
    results.mkdir()
    logs.mkdir()
    (results / "a.json").write_text(json.dumps(
        {"epochs": 30, "top1": 80.0, "train_seconds": 12.0, "median_images_per_s": 1000.0}))
    (logs / "b.log").write_text("lowbit: error: something\n")
    (logs / "c.log").write_text(f"saved {tmp_path}/runs/c/last.safetensors\nepoch 3/30\n"
                                f"{gc.run_experiments.STOPPED}\n")
    report = gc.summarise([Path(f"{n}.yaml") for n in "abcd"], tmp_path, 5.0)
    assert [report["rows"][n]["status"] for n in "abcd"] == ["ok", "failed", "stopped", "not run"]
    assert (report["ok"], report["failed"], report["stopped"], report["not run"]) == (1, 1, 1, 1)
    # 30 epochs of the real 50,000 training images at the measured 1,000 images/s
    assert report["rows"]["a"]["projected_full_train_s"] == 1500.0
    assert report["rows"]["b"]["log_tail"] == ["lowbit: error: something"]
    assert report["rows"]["c"]["log_tail"][0] == "saved $WORK/runs/c/last.safetensors"


def test_checkpoints_come_back_one_capped_tar_per_method(
        gc: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, out = tmp_path / "ckpt", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    for name in ("inq_a", "inq_b", "lbw_a", "qat_a", "resnet20_float"):
        (folder / f"{name}.safetensors").write_bytes(b"x" * 100)
    monkeypatch.setattr(gc, "CHECKPOINT_TAR_BYTES", 150)  # room for one file per tar
    gc.pack_checkpoints(folder, out)
    packed = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            packed[tar_path.name] = tar.getnames()
    assert packed == {"checkpoints_inq.tar": ["checkpoints/inq_a.safetensors"],
                      "checkpoints_lbw.tar": ["checkpoints/lbw_a.safetensors"],
                      "checkpoints_other.tar": ["checkpoints/qat_a.safetensors"]}


def test_each_row_is_timed_by_the_step_of_its_kind(gc: ModuleType) -> None:
    assert gc.step_config(None) == "float"
    assert gc.step_config({"method": "inq", "weight": {"bits": 3}}) == "inq w5 (half frozen)"
    lbw = {"method": "lbw", "weight": {"bits": 4, "method": "threshold"}}
    assert gc.step_config(lbw) == "lbw w4 (threshold, as shipped)"
    lbw["weight"] = {"bits": 4, "method": "alternating"}
    assert gc.step_config(lbw) == "lbw w4 (alternating)"
    lbw["weight"] = {"bits": 2, "method": "alternating"}
    assert gc.step_config(lbw) == "lbw w2 (exact ternary)"
    assert gc.step_config({"method": "gdrq", "weight": {"bits": 4}}) == "gdrq w4a4 (QAT stage)"
    gn = {"method": "groupnet", "structure": "v1", "bases": 3, "act": {"name": "uniform"}}
    assert gc.step_config(gn) == "v1 K=3 W1A4"
    assert gc.step_config({**gn, "act": {"name": "sign"}}) == "v1 K=5 W1A1"
    assert gc.step_config({**gn, "structure": "layerwise"}) == "layerwise K=5 W1A4"


def test_the_estimate_covers_every_row_with_a_measured_step(gc: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "estimate.json"
    rows = [str(ROOT / "experiments" / m) for m in ("inq", "groupnet")]
    assert gc.main(["estimate", *rows, "--steps-dir", str(ROOT / "benchmarks/results/gpu"),
                    "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    inq = report["rows"]["inq_w3_resnet20_cifar10"]
    assert inq["epochs"] == 70  # 7 partition steps x the GPU budget's 10 epochs each
    assert inq["hours"] == round(70 * 391 * inq["step_ms"] / 1e3 / 3600, 2)
    assert report["total_hours"] == round(sum(r["hours"] for r in report["rows"].values()), 1)
