import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lowbit.engine.checkpoint import (
    META_KEY,
    SUM_KEY,
    check_run_meta,
    digest,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    optimizer_state,
    save_checkpoint,
)
from lowbit.errors import CheckpointError


def test_round_trip(tmp_path: Path) -> None:
    tensors = {"model/w": torch.randn(3, 4), "model/n": torch.tensor(5)}
    path = save_checkpoint(tmp_path / "c.safetensors", tensors, {"epoch": 3, "config": {"a": 1}})
    got, meta = load_checkpoint(path)
    assert meta["epoch"] == 3 and meta["config"] == {"a": 1}
    assert torch.equal(got["model/w"], tensors["model/w"])
    assert not list(tmp_path.glob("*.tmp"))  # no temp file left behind


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.randn(100)}, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a lowbit checkpoint"):
        load_checkpoint(foreign)
    pickle_file = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickle_file)
    with pytest.raises(CheckpointError):
        load_checkpoint(pickle_file)


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)}, {"epoch": 1})

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"w": torch.zeros(2)}, {"epoch": 2})
    _, meta = load_checkpoint(path)
    assert meta["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_model_state_checks_shapes_and_nan() -> None:
    model = torch.nn.Linear(3, 2)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    load_model_state(model, good, "x")
    with pytest.raises(CheckpointError, match="shape"):
        load_model_state(model, {**good, "weight": torch.zeros(2, 4)}, "x")
    with pytest.raises(CheckpointError, match="missing"):
        load_model_state(model, {"weight": good["weight"]}, "x")
    with pytest.raises(CheckpointError, match="NaN"):
        load_model_state(model, {**good, "bias": torch.tensor([float("nan"), 0.0])}, "x")


def test_optimizer_state_round_trip() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_state(opt)
    opt2 = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    load_optimizer_state(opt2, tensors, meta)
    assert opt2.param_groups[0]["lr"] == 0.1
    buf1 = opt.state[model.weight]["momentum_buffer"]
    assert torch.equal(opt2.state[model.weight]["momentum_buffer"], buf1)


def _tamper(path: Path, edit) -> None:  # noqa: ANN001 - edit(tensors, metadata), in place
    raw = path.read_bytes()
    tensors = load_file(path)
    metadata = dict(json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"])
    edit(tensors, metadata)
    save_file(tensors, path, metadata=metadata)


def _flip(tensors: dict, metadata: dict) -> None:
    w = tensors["model/w"].clone()
    w.view(torch.int32)[0] ^= 1 << 20
    tensors["model/w"] = w


def _edit_meta(tensors: dict, metadata: dict) -> None:
    meta = json.loads(metadata[META_KEY])
    meta["epoch"] = 7
    metadata[META_KEY] = json.dumps(meta)


@pytest.mark.parametrize("edit", [_flip, _edit_meta, lambda t, m: t.pop("model/n"),
                                  lambda t, m: t.__setitem__("model/x", torch.zeros(1))],
                         ids=["flipped bit", "edited header", "missing key", "added key"])
def test_integrity_digest(edit, tmp_path: Path) -> None:  # noqa: ANN001
    tensors = {"model/w": torch.randn(3, 4), "model/n": torch.tensor(5)}
    path = save_checkpoint(tmp_path / "c.safetensors", tensors, {"epoch": 3})
    load_checkpoint(path)
    _tamper(path, edit)
    with pytest.raises(CheckpointError, match="integrity check") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_file_without_digest_predates_the_check(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)}, {"epoch": 1})
    _tamper(path, lambda t, m: m.pop(SUM_KEY))
    with caplog.at_level(logging.DEBUG, logger="lowbit.engine.checkpoint"):
        assert load_checkpoint(path)[1]["epoch"] == 1
    assert "no integrity digest" in caplog.text


@pytest.mark.parametrize(("header", "message"), [
    ("[1, 2]", "JSON list"), ('"text"', "JSON str"), ("{", "truncated or not")])
def test_malformed_metadata(header: str, message: str, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)}, {})
    _tamper(path, lambda t, m: m.update({META_KEY: header, SUM_KEY: digest(t, header)}))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize(("meta", "message"), [
    ({}, "'config' is missing"), ({"config": [1]}, "'config' is a JSON list"),
    ({"config": {}, "model": "m", "dataset": 3}, "'dataset' is a JSON int"),
    ({"config": {}, "model": "m", "dataset": "d", "num_classes": True}, "'num_classes'"),
    ({"config": {}, "model": "m", "dataset": "d", "num_classes": 0, "in_channels": 3}, "> 0")])
def test_run_meta_checks(meta: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        check_run_meta(meta, "f.safetensors")


def test_model_state_checks_dtype_and_variance() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="dtype"):
        load_model_state(model, {**good, "0.weight": good["0.weight"].double()}, "x")
    with pytest.raises(CheckpointError, match="negative BatchNorm variance"):
        load_model_state(model, {**good, "1.running_var": torch.tensor([1.0, -1.0])}, "x")


def test_files_are_created_with_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)}, {})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def test_digest_covers_every_dtype_and_shape(tmp_path: Path) -> None:
    tensors = {"bf16": torch.randn(3).bfloat16(), "scalar": torch.tensor(5),
               "empty": torch.zeros(0), "mask": torch.tensor([True, False]),
               "t": torch.randn(4, 3).t()}
    path = save_checkpoint(tmp_path / "c.safetensors", tensors, {})
    got, _ = load_checkpoint(path)
    assert all(torch.equal(got[k], v) for k, v in tensors.items())
    assert digest(tensors, "{}") != digest({**tensors, "mask": torch.tensor([True, True])}, "{}")
