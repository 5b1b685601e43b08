"""`lowbit.artifacts`: one loader for every model file format, writers that take a model."""

from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.api import train
from lowbit.artifacts import (
    FORMATS,
    ModelFormat,
    export_file,
    format_of,
    load_model,
    register_format,
    save_model,
)
from lowbit.config import build_config
from lowbit.engine.checkpoint import load_checkpoint, save_checkpoint
from lowbit.errors import CheckpointError, LowbitError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("artifacts")
    cfg = build_config(base={
        "model": {"name": "small_cnn", "width": 0.25},
        "data": {"name": "synthetic", "batch_size": 256},
        "train": {"epochs": 1, "progress": False},
        "quant": {"method": "qat", "weight": {"name": "ternary"}}})
    train(cfg, run_path=tmp / "run")
    return tmp / "run" / "final.safetensors"


def test_formats_found_by_header(ckpt: Path, tmp_path: Path) -> None:
    packed = export_file(ckpt, tmp_path / "named.safetensors", "packed")  # suffix is not trusted
    folded = export_file(ckpt, tmp_path / "f.lowbit", "folded")
    assert [format_of(p).name for p in (ckpt, packed, folded)] == ["checkpoint", "packed",
                                                                  "folded"]
    refolded = export_file(packed, tmp_path / "g.safetensors", "folded")  # from the packed file
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = load_model(ckpt)[0](x)
        assert torch.equal(load_model(packed)[0](x), ref)
        torch.testing.assert_close(load_model(folded)[0](x), ref, rtol=1e-4, atol=1e-4)
        assert torch.equal(load_model(refolded)[0](x), load_model(folded)[0](x))


def test_a_format_registered_from_outside(tmp_path: Path) -> None:
    def load(path: Path) -> tuple[nn.Module, dict]:
        return nn.Linear(int(path.read_text()), 1), {"model": "toy"}

    fmt = register_format(ModelFormat("toy-test", None, (".toy",), load))
    try:
        (tmp_path / "m.toy").write_text("3")
        model, meta = load_model(tmp_path / "m.toy")
        assert model.in_features == 3 and meta["model"] == "toy"
        with pytest.raises(ValueError, match="already registered"):
            register_format(fmt)
        with pytest.raises(LowbitError, match="cannot write model format 'toy-test'"):
            save_model(model, meta, tmp_path / "x.toy", "toy-test")
    finally:
        del FORMATS["toy-test"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("dataset"), "'dataset' is missing"),
    (lambda m: m.__setitem__("config", "resnet20"), "'config' is a JSON str"),
    (lambda m: m.__setitem__("num_classes", [10]), "'num_classes' is a JSON list"),
    (lambda m: m["config"].__setitem__("model", {"name": "nope"}), "stored config"),
    (lambda m: m["config"].pop("model"), "does not match the model"),  # default model
])
def test_malformed_checkpoint_metadata(edit, message: str, ckpt: Path,  # noqa: ANN001
                                       tmp_path: Path) -> None:
    tensors, meta = load_checkpoint(ckpt)
    edit(meta)
    meta.pop("format")
    bad = save_checkpoint(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_bad_weights_are_refused_before_evaluation(ckpt: Path, tmp_path: Path) -> None:
    tensors, meta = load_checkpoint(ckpt)
    meta.pop("format")
    var = next(k for k in tensors if k.endswith("running_var"))
    for key, value, message in [(var, -tensors[var] - 1, "negative BatchNorm variance"),
                                (var, tensors[var] * float("nan"), "NaN"),
                                (var, tensors[var].double(), "dtype")]:
        bad = save_checkpoint(tmp_path / "bad.safetensors", {**tensors, key: value}, meta)
        with pytest.raises(CheckpointError, match=message):
            load_model(bad)
