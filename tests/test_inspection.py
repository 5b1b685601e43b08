"""`lowbit inspect` / `export` / `quantize` on real (tiny) runs."""

import json
from pathlib import Path

import pytest
import yaml

from lowbit.cli import main
from support import tiny_run_args


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "float"
    code = main(["train", *tiny_run_args(train__epochs=1), "--run-dir", str(run)])
    assert code == 0
    return run / "final.safetensors"


def test_quantize_inspect_export(
    float_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "inq"
    assert (
        main(
            [
                "quantize",
                "--method",
                "inq",
                "--bits",
                "3",
                "--from",
                str(float_ckpt),
                "--set",
                "quant.epochs_per_step=1",
                "--set",
                "quant.portions=[0.5,0.75,0.9,1.0]",
                "--run-dir",
                str(run),
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["epochs"] == 3  # INQ's four default steps, one epoch each between them
    ckpt = run / "final.safetensors"
    assert main(["inspect", str(ckpt), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["compliance"]["passed"] is True
    weight_bits = {
        row["weight_bits"] for row in report["layers"] if row["type"].startswith("Quant")
    }
    assert weight_bits == {3}
    assert main(["export", str(ckpt), "-o", str(tmp_path / "m.lowbit"), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["bytes"] == (tmp_path / "m.lowbit").stat().st_size
    assert main(["eval", str(tmp_path / "m.lowbit"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == result["top1"]
    _inspect_and_repack_packed(tmp_path / "m.lowbit", capsys)


def _inspect_and_repack_packed(packed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A .lowbit file: inspect reports its real size and compression; export packs it again."""
    assert main(["inspect", str(packed), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    size = packed.stat().st_size
    assert report["file_bytes"] == size and report["compliance"]["passed"] is True
    assert report["file_compression"] == pytest.approx(report["totals"]["float_bytes"] / size)
    assert report["file_compression"] > 5  # 3-bit codes: far below float, header included
    assert {r["weight_bits"] for r in report["layers"] if r["type"].startswith("Quant")} == {3}
    again = packed.with_name("again.lowbit")
    assert main(["export", str(packed), "-o", str(again), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] == size


def test_inspect_recipe_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {name: resnet20}\ndata: {name: cifar10}\n"
        "quant: {method: qat, weight: {name: ternary}}\n"
    )
    assert main(["inspect", str(recipe), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["params"] > 250_000
    assert report["compliance"]["passed"] is True


def test_inspect_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "nope.safetensors"]) == 2
    assert "not found" in capsys.readouterr().err


def test_quantize_unknown_method(float_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantize", "--method", "magic", "--bits", "2", "--from", str(float_ckpt)]) == 2
    err = capsys.readouterr().err
    assert "unknown" in err and "'magic'; choose one of" in err and "inq" in err
    assert err.count("\n") == 1


def test_quantize_bits_disagreeing_with_an_old_shape_config_file(
    float_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("quant: {method: inq, bits: 4}\n")  # old `bits` is the weight's bits
    args = ["quantize", "--method", "inq", "--bits", "3", "--from", str(float_ckpt),
            "--config", str(recipe), "--dry-run"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--bits 3" in err and "quant.weight.bits=4" in err and err.count("\n") == 1


def test_quantize_config_file_refines_sections_and_keeps_the_source(
    float_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {seed: 5}\nquant: {method: qat, keep_float: none}\n")
    args = ["quantize", "--method", "qat", "--bits", "3", "--from", str(float_ckpt),
            "--config", str(recipe), "--dry-run"]
    assert main(args) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["seed"] == 5 and resolved["train"]["init"] == str(float_ckpt)
    assert resolved["train"]["progress"] is False  # the rest of the checkpoint's train section
    assert resolved["quant"]["keep_float"] == "none" and resolved["quant"]["weight"]["bits"] == 3
    recipe.write_text("train: {init: other.safetensors}\nquant: {method: qat}\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--from {float_ckpt}" in err and "train.init=other.safetensors" in err
