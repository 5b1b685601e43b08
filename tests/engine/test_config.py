from pathlib import Path

import pytest
import yaml

from lowbit.build import load_run
from lowbit.config import RunConfig, build_config
from lowbit.schema import ConfigError


def test_defaults_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 7, "seed": 3}, "optim": {"lr": 0.2}}))
    cfg = build_config(config_file=path, overrides=["train.epochs=9", "model.width=0.5"])
    assert isinstance(cfg, RunConfig)
    assert cfg.train.epochs == 9  # --set beats the file
    assert cfg.train.seed == 3  # the file beats the defaults
    assert cfg.optim.lr == 0.2
    assert cfg.model.width == 0.5
    assert cfg.optim.momentum == 0.9  # default kept


def test_unknown_key_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*'epochs'"):
        build_config(overrides=["train.epoch=3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=-1", "epochs must be >= 0"),
        ("train.epochs=ten", "train.epochs: expected int"),
        ("optim.lr=0", "lr must be a finite number > 0"),
        ("optim.name=rmsprop", "not one of"),
        ("schedule.milestones=[30,10]", "increasing"),
        ("model.width=-2", r"width must be in \(0, "),
        ("train.bf16=3", "expected bool"),
        ("quant.method=nonsense", "unknown quant.method 'nonsense'; choose one of"),
    ],
)
def test_bad_values_fail_at_load_time(override: str, message: str) -> None:
    # the `quant:` section is data to `build_config`; `load_run` resolves it against its method
    if not override.startswith("quant."):
        with pytest.raises(ConfigError, match=message):
            build_config(overrides=[override])
    with pytest.raises(ConfigError, match=message):
        load_run(overrides=[override])


def test_int_is_accepted_for_float_but_not_bool_for_int() -> None:
    assert build_config(overrides=["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError):
        build_config(overrides=["train.epochs=true"])


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        build_config(config_file=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(config_file=bad)


def test_round_trip_through_dict() -> None:
    cfg = build_config(overrides=["train.epochs=4", "schedule.milestones=[1,2]"])
    again = build_config(base=cfg.to_dict())
    assert again == cfg


def test_resolved_config_stores_the_canonical_quant_section() -> None:
    run = load_run(overrides=["quant.method=lbw", "quant.weight.bits=3"])
    assert run.cfg.quant == {"method": "lbw", "weight": {
        "name": "lbw", "bits": 3, "method": "alternating", "r": 1.0, "iters": 20,
        "per_channel": False}, "act": None, "rules": None, "keep_float": "first_last",
        "bn_recalibration_batches": 100, "blend": 0.0}
    again = load_run(base=run.cfg.to_dict())  # what a run directory stores loads back the same
    assert again.cfg == run.cfg and again.recipe.cfg == run.recipe.cfg
