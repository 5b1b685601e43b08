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
    (logs / "c.log").write_text(f"epoch 3/30\n{gc.run_experiments.STOPPED}\n")
    report = gc.summarise([Path(f"{n}.yaml") for n in "abcd"], results, logs, 5.0)
    assert [report["rows"][n]["status"] for n in "abcd"] == ["ok", "failed", "stopped", "not run"]
    assert (report["ok"], report["failed"], report["stopped"], report["not run"]) == (1, 1, 1, 1)
    # 30 epochs of the real 50,000 training images at the measured 1,000 images/s
    assert report["rows"]["a"]["projected_full_train_s"] == 1500.0
    assert report["rows"]["b"]["log_tail"] == ["lowbit: error: something"]


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
