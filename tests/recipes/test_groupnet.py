"""The groupnet recipe: config checks, `lowbit train`, resume after a crash, inspect, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowbit.accounting import check_compliance
from lowbit.api import evaluate_checkpoint, load_model, train
from lowbit.artifacts import export_file, load_packed
from lowbit.build import build_model, load_run
from lowbit.cli import main
from lowbit.data import load_dataset
from lowbit.engine import Trainer
from lowbit.engine.rundir import RunDir
from lowbit.export.frozen import Decoded
from lowbit.nn.multibranch import BinaryConv2d, BranchSum
from lowbit.recipes import parse_quant_section
from lowbit.schema import ConfigError
from lowbit.transform import quantize_model

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "groupnet"


@pytest.mark.parametrize(("bad", "message"), [
    ({"weight": {"name": "ternary"}}, "binary"), ({"bases": 0}, "bases"),
    ({"act": {"bits": 0}}, "bits"), ({"act": {"name": "uniform", "clip": "max"}}, "fixed"),
    ({"structure": "groups"}, "groups"), ({"groups": [["a"]]}, "groups"),
    ({"structure": "v4"}, "v4"), ({"pad_value": 0.5}, "pad_value"),
])
def test_config_is_checked_at_load_time(bad: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_quant_section({"method": "groupnet", **bad})


def test_shipped_recipes_load() -> None:
    files = sorted(EXPERIMENTS.glob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        cfg = load_run(config_file=path).cfg
        assert cfg.quant is not None and cfg.quant["method"] == "groupnet", path.name
        assert cfg.train.init and cfg.train.epochs >= 1, path.name


def quant_config(tmp_path: Path, tiny_config, act_bits: int = 2) -> dict:  # noqa: ANN001
    base = tiny_config(tmp_path, epochs=3)
    act = {"name": "sign"} if act_bits == 1 else {"bits": act_bits}
    return {**base, "quant": {"method": "groupnet", "bases": 2, "act": act,
                              "structure": "v1", "gates": True}}


def test_train_resume_after_crash_matches_an_uninterrupted_run(tmp_path: Path, tiny_config,
                                                               crash_at) -> None:
    base = quant_config(tmp_path, tiny_config)
    full = train(load_run(base=base), run_path=tmp_path / "full")
    assert full["epochs"] == 3

    def trainer(hooks: list, resume: bool = False) -> Trainer:
        run = load_run(base=base)
        torch.manual_seed(run.cfg.train.seed)
        data = load_dataset("synthetic")
        model = build_model(run, data.train.num_classes, data.train.in_channels)
        return Trainer(run.cfg, model, data, [*run.callbacks, *hooks],
                       RunDir(tmp_path / "part", resume=resume), phases=run.phases)

    crashed = trainer([crash_at(2)])
    with pytest.raises(RuntimeError):
        crashed.fit()
    assert crashed.run_dir is not None
    crashed.run_dir.close()
    resumed = trainer([crash_at(-1)], resume=True)
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
    train(load_run(base=quant_config(tmp_path, tiny_config, act_bits=1)),
          run_path=tmp_path / "run")
    assert main(["inspect", str(tmp_path / "run" / "final.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["layers"]
    assert {r["branches"] for r in rows if r["weight_bits"] == 1} == {2}
    assert any(r["type"] == "BranchSum" and r["macs"] > 0 for r in rows)
    assert report["totals"]["speedup"] > 1 and report["compliance"]["passed"]


def test_packed_export_at_one_bit_per_weight(tmp_path: Path, tiny_config) -> None:
    train(load_run(base=quant_config(tmp_path, tiny_config, act_bits=1)),
          run_path=tmp_path / "run")
    path = export_file(tmp_path / "run" / "final.safetensors", tmp_path / "m.lowbit")
    model, _ = load_model(tmp_path / "run" / "final.safetensors")
    packed, _ = load_packed(path)
    decoded = [m for m in packed.modules() if isinstance(m, Decoded)]
    assert decoded and {q.bits for q in decoded} == {1}
    assert any(isinstance(m, BranchSum) for m in packed.modules())
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(packed(x), model(x))
    layer = next(m for m in packed.modules() if isinstance(m, BinaryConv2d))
    assert layer.pad_value == 1.0 and layer.act_scale  # the XNOR options survive the export
    evaluated = evaluate_checkpoint(path)  # `lowbit eval` of the packed file
    assert evaluated["top1"] == evaluate_checkpoint(tmp_path / "run" / "final.safetensors")["top1"]


def test_converters_apply_group_net_to_any_layer_or_block() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                              torch.nn.Flatten(), torch.nn.LazyLinear(4))
    net(torch.randn(1, 3, 8, 8))
    spec = {"convert": "groupnet_layerwise", "bases": 3, "act": {"name": "uniform", "bits": 2,
                                                                  "signed": False,
                                                                  "clip": "fixed",
                                                                  "clip_value": 2.0}}
    report = quantize_model(net, {"3": spec, ".*": None})
    layer = report.model[3]
    assert isinstance(layer, BranchSum) and len(layer.branches) == 3
    assert [c.converter for c in report.converted] == ["groupnet_layerwise"]
    assert report.model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
