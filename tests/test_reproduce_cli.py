"""`lowbit reproduce` writes to the run directory unless asked to --record, and takes --set."""

import json
from pathlib import Path

import yaml

from lowbit.cli import main


def _experiment(tmp_path: Path, tiny_config) -> Path:
    base = tiny_config(tmp_path, epochs=1)
    exp = {**base, "expected": {"metric": "top1", "value": 0.0}}
    path = tmp_path / "tiny_row.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def test_scratch_by_default_and_record_on_request(tmp_path: Path, tiny_config, capsys) -> None:
    exp = _experiment(tmp_path, tiny_config)
    results, ckpts = tmp_path / "results", tmp_path / "ckpts"
    dirs = ["--results-dir", str(results), "--checkpoints-dir", str(ckpts)]
    assert main(["reproduce", str(exp), "--run-dir", str(tmp_path / "a"), *dirs,
                 "--set", "train.epochs=2"]) == 0
    assert not results.exists() and not ckpts.exists()  # nothing committed-looking touched
    scratch = json.loads((tmp_path / "a" / "tiny_row.json").read_text())
    assert scratch["epochs"] == 2  # --set applied
    assert "--set train.epochs=2" in scratch["command"]
    assert main(["reproduce", str(exp), "--run-dir", str(tmp_path / "b"), *dirs,
                 "--record"]) == 0
    recorded = json.loads((results / "tiny_row.json").read_text())
    assert recorded["epochs"] == 1 and (ckpts / "tiny_row.safetensors").is_file()
