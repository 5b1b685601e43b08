"""`train.device`: the loop follows the model to its device; CUDA asked for without CUDA is one
line and exit 2. (The CUDA path itself runs only where a GPU is lent: nothing here needs one.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lowbit.api import train
from lowbit.build import load_run
from lowbit.cli import main
from lowbit.engine.checkpoint import load_checkpoint
from lowbit.engine.device import autocast, resolve_device, to_device
from lowbit.schema import ConfigError


def test_an_explicit_cpu_device_trains_like_the_default(tmp_path: Path, tiny_config) -> None:
    base = train(load_run(base=tiny_config(tmp_path, epochs=1)), run_path=tmp_path / "default")
    cpu = train(load_run(base=tiny_config(tmp_path, epochs=1), overrides=["train.device=cpu"]),
                run_path=tmp_path / "cpu")
    a, _ = load_checkpoint(tmp_path / "default" / "final.safetensors")
    b, _ = load_checkpoint(tmp_path / "cpu" / "final.safetensors")
    assert base["top1"] == cpu["top1"] and all(torch.equal(a[k], b[k]) for k in a)


def test_auto_picks_cuda_only_when_there_is_one() -> None:
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_config_error(tmp_path: Path, tiny_config, capsys) -> None:
    with pytest.raises(ConfigError, match="has no CUDA"):
        resolve_device("cuda:0")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path, epochs=1)))
    assert main(["train", "--config", str(cfg), "--set", "train.device=cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no CUDA" in err[0]


def test_bad_device_names_are_refused(tmp_path: Path, tiny_config) -> None:
    with pytest.raises(ConfigError, match="device must be cpu, cuda, cuda:N or auto"):
        load_run(base=tiny_config(tmp_path), overrides=["train.device=gpu0"])


def test_batches_follow_the_model_and_autocast_names_its_device() -> None:
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    assert to_device((x, y), torch.device("cpu"))[0] is x
    with autocast(True, "cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(False, "cpu"):
        assert not torch.is_autocast_enabled("cpu")
