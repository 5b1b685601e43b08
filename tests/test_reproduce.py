"""`lowbit reproduce`: one experiment row trained, re-evaluated from its copy and recorded."""

import json
from pathlib import Path

import pytest
import yaml

from lowbit.api import evaluate_checkpoint, train
from lowbit.config import build_config
from lowbit.engine.checkpoint import load_checkpoint
from lowbit.schema import ConfigError
from lowbit.tools.reproduce import reproduce


def _experiment(tmp_path: Path, tiny_config, **expected: float) -> Path:
    base = tiny_config(tmp_path, epochs=2)
    float_run = train(build_config(base=base), run_path=tmp_path / "float")
    train_section = {k: v for k, v in base["train"].items() if k != "epochs"}  # INQ fixes it
    exp = {
        **base,
        "train": {**train_section, "init": str(Path(float_run["run_dir"]) / "final.safetensors")},
        "quant": {"method": "inq", "weight": {"bits": 4}, "portions": [0.5, 1.0],
                  "epochs_per_step": 1},
        "expected": {"metric": "top1", **expected},
    }
    path = tmp_path / "inq_w4_tiny.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def test_reproduce_records_accuracy_verdict_and_storage(tmp_path: Path, tiny_config) -> None:
    exp = _experiment(tmp_path, tiny_config, float_delta=-100.0)
    results, ckpts = tmp_path / "results", tmp_path / "ckpts"
    data_dir = str(tmp_path / "machine-specific-data")
    out = reproduce(exp, run_dir=tmp_path / "run", results_dir=results, checkpoints_dir=ckpts,
                    data_dir=data_dir)
    saved = json.loads((results / "inq_w4_tiny.json").read_text())
    assert saved == out
    ckpt = ckpts / "inq_w4_tiny.safetensors"
    assert saved["checkpoint"] == str(ckpt)
    assert saved["top1"] == evaluate_checkpoint(ckpt)["top1"]  # re-evaluated from the copy
    float_top1 = evaluate_checkpoint(tmp_path / "float" / "final.safetensors")["top1"]
    assert saved["threshold"] == pytest.approx(float_top1 - 100.0)
    assert saved["passed"] is True and saved["epochs"] == 1
    size = saved["size"]
    assert size["weight_bits"] == [4] and size["compliance"] is True
    assert size["quantized_layers"] >= 2
    assert 0 < size["accounted_bytes"] < size["float_bytes"] and size["compression"] > 1
    assert size["packed_file_bytes"] < ckpt.stat().st_size  # codes packed at 4 bits
    # the packed artifact itself was evaluated, and it scores what the checkpoint scores
    assert (size["packed_top1"], size["packed_top5"]) == (saved["top1"], saved["top5"])
    assert saved["machine"]["cpu_model"] and saved["commit"]
    # the committed record and checkpoint name no path of this machine's data
    assert data_dir not in (results / "inq_w4_tiny.json").read_text()
    assert load_checkpoint(ckpt)[1]["config"]["data"]["data_dir"] is None
    run_cfg = load_checkpoint(tmp_path / "run" / "final.safetensors")[1]["config"]
    assert run_cfg["data"]["data_dir"] == data_dir  # the run's own files are left as they were


def test_reproduce_records_a_miss(tmp_path: Path, tiny_config) -> None:
    exp = _experiment(tmp_path, tiny_config, float_delta=+100.0)  # unreachable on purpose
    out = reproduce(exp, run_dir=tmp_path / "run", results_dir=tmp_path / "r",
                    checkpoints_dir=tmp_path / "c")
    assert out["passed"] is False and (tmp_path / "r" / "inq_w4_tiny.json").is_file()


def test_float_delta_needs_the_float_checkpoint(tmp_path: Path, tiny_config) -> None:
    exp = {**tiny_config(tmp_path), "expected": {"metric": "top1", "float_delta": -1.0}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(exp))
    with pytest.raises(ConfigError, match="float_delta needs train.init"):
        reproduce(path, run_dir=tmp_path / "run", results_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing recorded
