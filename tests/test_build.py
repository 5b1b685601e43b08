"""The build layer: one quant spec, method defaults, migration, and conflicts naming both sides."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from lowbit.build import DEFAULT_EPOCHS, load_run
from lowbit.cli import main
from lowbit.schema import ConfigError
from support import tiny_run_args

OLD_GDRQ = {"method": "gdrq", "weight_bits": 4, "act_bits": 2, "k_w": 3.0, "k_a": 4.0,
            "group_size": 4, "quantize_first_last": True, "reshape_epochs": 1, "quant_epochs": 2}
NEW_GDRQ = {"method": "gdrq", "weight": {"bits": 4, "k": 3.0, "group_size": 4},
            "act": {"bits": 2, "k": 4.0}, "keep_float": "none", "reshape_epochs": 1,
            "quant_epochs": 2}


def test_old_keys_migrate_to_the_same_canonical_section(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="lowbit.recipes.legacy"):
        old = load_run(base={"quant": OLD_GDRQ})
    assert len(caplog.records) == 1 and "weight_bits" in caplog.records[0].getMessage()
    new = load_run(base={"quant": NEW_GDRQ})
    assert old.cfg.quant == new.cfg.quant
    assert new.cfg.quant["weight"]["bits"] == 4 and new.cfg.quant["act"]["k"] == 4.0
    assert new.cfg.quant["weight"]["name"] == "scaleclip"  # the method's default spec, merged
    for section in ({"method": "inq", "bits": 3, "skip_first_last": True},
                    {"method": "inq", "weight": {"bits": 3}, "keep_float": "first_last"}):
        run = load_run(base={"quant": section})
        assert run.cfg.quant["weight"]["bits"] == 3 and run.cfg.quant["keep_float"] == "first_last"


def test_act_null_keeps_activations_float() -> None:
    run = load_run(base={"quant": {"method": "gdrq", "act": None}})
    assert run.cfg.quant["act"] is None
    assert load_run(base={"quant": {"method": "gdrq", "act_bits": None}}).cfg.quant["act"] is None


def test_method_fixes_its_schedule_and_a_different_train_epochs_is_an_error() -> None:
    inq = {"method": "inq", "portions": [0.5, 1.0], "epochs_per_step": 3}
    assert load_run(base={"quant": inq}).cfg.train.epochs == 3
    assert load_run(base={"quant": inq, "train": {"epochs": 3}}).cfg.train.epochs == 3
    with pytest.raises(ConfigError, match="train.epochs=2 conflicts with method inq.*fixes 3"):
        load_run(base={"quant": inq}, overrides=["train.epochs=2"])
    assert load_run().cfg.train.epochs == DEFAULT_EPOCHS
    assert load_run(base={"quant": {"method": "lbw"}, "train": {"epochs": 7}}).cfg.train.epochs == 7


def test_a_weight_spec_of_another_family_is_refused() -> None:
    with pytest.raises(ConfigError, match="method inq works with inq weights, got 'uniform'"):
        load_run(base={"quant": {"method": "inq", "weight": {"name": "uniform", "bits": 3}}})


def test_unknown_methods_are_one_line_errors() -> None:
    for bad in ("nonsense", ["inq"], None):
        with pytest.raises(ConfigError, match="unknown quant.method"):
            load_run(base={"quant": {"method": bad}})


def test_cli_bits_flag_and_config_file_must_agree(tmp_path: Path, capsys) -> None:
    run = tmp_path / "float"
    assert main(["train", *tiny_run_args(train__epochs=1), "--run-dir", str(run)]) == 0
    recipe = tmp_path / "inq.yaml"
    recipe.write_text(yaml.safe_dump({"quant": {"weight": {"bits": 4}, "epochs_per_step": 1}}))
    args = ["quantize", "--method", "inq", "--from", str(run / "final.safetensors"),
            "--config", str(recipe), "--dry-run"]
    assert main([*args, "--bits", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--bits 3" in err[0] and "quant.weight.bits=4" in err[0]
    assert main([*args, "--bits", "4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["quant"]["weight"]["bits"] == 4 and printed["train"]["epochs"] == 3
    # without a config file, --bits is the weight quantizer's bits for every method
    for method in ("qat", "inq", "lbw", "gdrq"):
        assert main(["quantize", "--method", method, "--bits", "3", "--from",
                     str(run / "final.safetensors"), "--dry-run"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["quant"]["weight"]["bits"] == 3


def test_cli_epochs_conflict_is_one_line(tmp_path: Path, capsys) -> None:
    code = main(["train", *tiny_run_args(train__epochs=2), "--set", "quant.method=inq",
                 "--set", "quant.portions=[0.5,1.0]", "--set", "quant.epochs_per_step=1",
                 "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "train.epochs=2 conflicts with method inq" in err[0]


def test_quantize_starts_from_the_methods_fine_tuning_defaults(tmp_path: Path, capsys) -> None:
    run = tmp_path / "float"
    assert main(["train", *tiny_run_args(train__epochs=1), "--set", "optim.lr=0.3",
                 "--run-dir", str(run)]) == 0
    src = str(run / "final.safetensors")
    for method, epochs in (("lbw", 15), ("inq", 12)):
        assert main(["quantize", "--method", method, "--bits", "4", "--from", src,
                     "--dry-run"]) == 0
        cfg = yaml.safe_load(capsys.readouterr().out)
        assert cfg["optim"]["lr"] == 0.005 and cfg["schedule"]["name"] == "cosine"
        assert cfg["train"]["epochs"] == epochs and cfg["train"]["init"] == src
    assert main(["quantize", "--method", "lbw", "--bits", "4", "--from", src, "--dry-run",
                 "--set", "optim.lr=0.01", "--set", "train.epochs=3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.01 and cfg["train"]["epochs"] == 3
