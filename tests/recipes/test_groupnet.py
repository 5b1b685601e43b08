"""The groupnet recipe: config checks, `lowbit train`, resume after a crash, inspect, export."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from lowbit.accounting import check_compliance
from lowbit.api import build_model, evaluate_checkpoint, load_model, train
from lowbit.cli import main
from lowbit.config import build_config
from lowbit.data import load_dataset
from lowbit.engine import Trainer
from lowbit.engine.rundir import RunDir
from lowbit.export.packed import export_packed, load_packed
from lowbit.nn.multibranch import BinaryConv2d, BranchSum
from lowbit.recipes import validate_quant_section
from lowbit.schema import ConfigError

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "groupnet"


@pytest.mark.parametrize(("bad", "message"), [
    ({"weight_bits": 2}, "binary"), ({"bases": 0}, "bases"), ({"act_bits": 0}, "act_bits"),
    ({"structure": "groups"}, "groups"), ({"groups": [["a"]]}, "groups"),
    ({"structure": "v4"}, "v4"), ({"pad_value": 0.5}, "pad_value"), ({"beta": 0}, "beta"),
])
def test_config_is_checked_at_load_time(bad: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_quant_section({"method": "groupnet", **bad})


def test_shipped_recipes_load() -> None:
    files = sorted(EXPERIMENTS.glob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        cfg = build_config(config_file=path)
        assert cfg.quant is not None and cfg.quant["method"] == "groupnet", path.name
        assert cfg.train.init and cfg.train.epochs >= 1, path.name


def quant_config(tmp_path: Path, tiny_config, act_bits: int = 2) -> dict:  # noqa: ANN001
    base = tiny_config(tmp_path, epochs=3)
    return {**base, "quant": {"method": "groupnet", "bases": 2, "act_bits": act_bits,
                              "structure": "v1", "gates": True}}


def test_train_resume_after_crash_matches_an_uninterrupted_run(tmp_path: Path, tiny_config,
                                                               crash_at) -> None:
    cfg = build_config(base=quant_config(tmp_path, tiny_config))
    full = train(copy.deepcopy(cfg), run_path=tmp_path / "full")
    assert full["epochs"] == 3

    def trainer(hooks: list) -> Trainer:
        torch.manual_seed(cfg.train.seed)
        data = load_dataset("synthetic")
        model, recipe = build_model(cfg, data)
        return Trainer(cfg, model, data, recipe.hooks() + hooks, RunDir(tmp_path / "part"))

    with pytest.raises(RuntimeError):
        trainer([crash_at(2)]).fit()
    resumed = trainer([])
    resumed.resume(tmp_path / "part" / "last.safetensors")
    assert resumed.epoch == 2
    resumed.fit()
    ref, _ = load_model(tmp_path / "full" / "final.safetensors")
    ref_state = ref.state_dict()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, ref_state[key]), key
    assert any(".scales" in k for k in ref_state) and any(".gate" in k for k in ref_state)
    assert check_compliance(ref).passed


def test_inspect_shows_branch_rows_and_speedup(tmp_path: Path, tiny_config,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cfg = build_config(base=quant_config(tmp_path, tiny_config, act_bits=1))
    train(cfg, run_path=tmp_path / "run")
    assert main(["inspect", str(tmp_path / "run" / "final.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["layers"]
    assert {r["branches"] for r in rows if r["weight_bits"] == 1} == {2}
    assert any(r["type"] == "BranchSum" and r["macs"] > 0 for r in rows)
    assert report["totals"]["speedup"] > 1 and report["compliance"]["passed"]


def test_packed_export_at_one_bit_per_weight(tmp_path: Path, tiny_config) -> None:
    cfg = build_config(base=quant_config(tmp_path, tiny_config, act_bits=1))
    train(cfg, run_path=tmp_path / "run")
    path = export_packed(tmp_path / "run" / "final.safetensors", tmp_path / "m.lowbit")
    model, _ = load_model(tmp_path / "run" / "final.safetensors")
    packed, header = load_packed(path)
    assert all(info["bits"] == 1 for info in header["layers"].values())
    assert any(isinstance(m, BranchSum) for m in packed.modules())
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(packed(x), model(x))
    layer = next(m for m in packed.modules() if isinstance(m, BinaryConv2d))
    assert layer.pad_value == 1.0 and layer.act_scale  # the XNOR options survive the export
    evaluated = evaluate_checkpoint(path)  # `lowbit eval` of the packed file
    assert evaluated["top1"] == evaluate_checkpoint(tmp_path / "run" / "final.safetensors")["top1"]
