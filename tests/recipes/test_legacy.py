"""Old-shape `quant:` sections (lowbit <= 0.1) load through `lowbit.recipes.legacy`: the
committed checkpoints store such sections and still rebuild their models."""

import logging
from pathlib import Path

import pytest
import torch

from lowbit.api import load_model
from lowbit.artifacts import model_meta
from lowbit.build import load_run
from lowbit.engine.checkpoint import load_checkpoint
from lowbit.recipes import parse_quant_section, quant_section

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = sorted((ROOT / "benchmarks" / "checkpoints").glob("*.safetensors"))
EXPERIMENTS = sorted(p for p in (ROOT / "experiments").glob("*/*.yaml")
                     if p.parent.name != "study")  # study plans are not run configs
OLD_KEYS = {"bits", "weight_bits", "act_bits", "k_w", "k_a", "solver", "n1", "strategy",
            "skip_first_last", "quantize_first_last", "group_size", "stat", "momentum",
            "learnable", "r", "iters", "per_channel"}


@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.stem)
def test_committed_checkpoint_config_migrates_and_loads(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_checkpoint(path)[1]["config"]
    with caplog.at_level(logging.WARNING, logger="lowbit.recipes.legacy"):
        run = load_run(base=config)
    old = set(config["quant"] or {}) & OLD_KEYS
    assert ("old keys" in caplog.text) == bool(old)
    assert run.cfg.train.epochs == config["train"]["epochs"]  # the schedule agrees
    if run.recipe is not None:
        section = run.cfg.quant
        assert not set(section) & OLD_KEYS  # canonical: weight/act/keep_float + knobs
        assert quant_section(parse_quant_section(section)) == section  # stable
    model, _ = load_model(path)  # strict load into the rebuilt (migrated) model
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_there_are_committed_checkpoints() -> None:
    assert len(CHECKPOINTS) >= 10 and len(EXPERIMENTS) >= 10


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_resolves_to_its_checkpoints_method(path: Path) -> None:
    """Each shipped experiment resolves to the method of the run that made its committed
    checkpoint, and when the YAML still describes that run (same quant section), to its schedule
    too. (A row whose YAML was changed for a new budget keeps its old checkpoint until it is
    re-recorded.)"""
    run = load_run(config_file=path)
    found = [p for p in (ROOT / "benchmarks" / "checkpoints" / f"{path.stem}{suffix}"
                         for suffix in (".safetensors", ".lowbit")) if p.is_file()]
    if not found:
        pytest.skip(f"no committed checkpoint for {path.stem}")
    stored = model_meta(found[0])["config"]  # a packed file keeps no training sections
    recorded = load_run(base=stored).cfg
    assert (run.cfg.quant or {}).get("method") == (recorded.quant or {}).get("method")
    same_run = run.cfg.quant == recorded.quant and run.cfg.distill == recorded.distill
    if same_run and "train" in stored:
        assert run.cfg.train.epochs == recorded.train.epochs
