from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lowbit.engine.checkpoint import (
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
