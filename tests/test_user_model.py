"""A user's own model from a module outside lowbit, through every verb; files never import code
unless the user trusts the name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.models import create_model
from lowbit.models.registry import _TRUSTED

NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels, width=1.0, hidden=8):
        super().__init__()
        c = max(1, round(hidden * width))
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def build(num_classes, in_channels, width=1.0, hidden=8):
    return Net(num_classes, in_channels, width, hidden)
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_nets:build"
    sys.modules.pop("my_nets", None)
    _TRUSTED.clear()


def test_user_model_through_every_verb(tmp_path: Path, user_module: str, capsys) -> None:
    run = tmp_path / "run"
    args = ["--set", "data.name=synthetic", "--set", "train.progress=false",
            "--set", "train.epochs=1"]
    assert main(["train", *args, "--set", f"model.name={user_module}",
                 "--set", "model.kwargs={hidden: 6}", "--run-dir", str(run)]) == 0
    ckpt = str(run / "final.safetensors")
    capsys.readouterr()
    assert main(["eval", ckpt]) == 2  # a file naming code: refused until trusted
    err = capsys.readouterr().err
    assert "never imports code a file names" in err and f"--model {user_module}" in err
    assert main(["eval", ckpt, "--model", user_module]) == 0
    assert main(["inspect", ckpt, "--model", user_module]) == 0
    assert main(["export", ckpt, "--model", user_module, "-o", str(tmp_path / "m.lowbit")]) == 0
    assert main(["eval", str(tmp_path / "m.lowbit"), "--model", user_module]) == 0
    assert main(["quantize", "--method", "lbw", "--bits", "2", "--from", ckpt, "--model",
                 user_module, "--set", "train.epochs=1", "--run-dir", str(tmp_path / "q")]) == 0


def test_user_builders_get_the_arguments_they_take(user_module: str) -> None:
    model = create_model(user_module, num_classes=3, in_channels=1, width=2.0, hidden=4)
    assert model.fc.out_features == 3 and model.conv1.in_channels == 1
    assert model.conv1.out_channels == 8
    with pytest.raises(Exception, match="never imports code"):
        create_model(user_module, trusted=False)


def test_bad_user_model_names_are_one_line(user_module: str) -> None:
    with pytest.raises(Exception, match="cannot import it"):
        create_model("no_such_module_xyz:build")
    with pytest.raises(Exception, match="cannot import it"):
        create_model("my_nets:nothing")
