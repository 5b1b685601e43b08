"""Your own data through the Python API: Datasets and DataLoaders, float and with a method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lowbit.api import evaluate_model, fit
from lowbit.data import load_dataset
from lowbit.errors import DataError


def _data(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    x = torch.randn(n, 2, 8, 8, generator=gen) * 0.5
    x[:, 0] += y.view(-1, 1, 1).float()  # the class shows in channel 0's level
    return TensorDataset(x, y)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


CONFIG = {"optim": {"lr": 0.05}, "train": {"epochs": 3, "progress": False},
          "data": {"batch_size": 32}}


@pytest.mark.parametrize("as_loader", [False, True])
def test_fit_trains_on_a_dataset_or_a_dataloader(tmp_path: Path, as_loader: bool) -> None:
    train, test = _data(512, 0), _data(256, 1)
    if as_loader:
        train = DataLoader(train, batch_size=32, shuffle=True)
        test = DataLoader(test, batch_size=64)
    out = fit(_net(), train, test, config=CONFIG, run_dir=tmp_path / "run")
    assert out["top1"] > 80.0  # 3 classes, chance is 33 %
    assert out["top1"] == pytest.approx(evaluate_model(out["model"], test)["top1"])
    assert (tmp_path / "run" / "final.safetensors").is_file()


def test_fit_with_a_method_quantizes_your_model(tmp_path: Path) -> None:
    quant = {"method": "lbw", "weight": {"bits": 2}}
    out = fit(_net(), _data(512, 0), _data(256, 1), quant=quant, config=CONFIG,
              run_dir=tmp_path / "q")
    layer = out["model"][3]
    assert type(layer).__name__ == "QuantConv2d" and layer.weight_quant.bits == 2
    assert out["top1"] > 60.0


def test_the_user_dataset_name_explains_itself() -> None:
    with pytest.raises(DataError, match="lowbit.api.evaluate_model"):
        load_dataset("user")


def test_folder_datasets_take_an_image_size_from_the_config(tmp_path: Path,
                                                             monkeypatch) -> None:
    import lowbit.api
    from data.test_data_folder import make_folder
    from lowbit.api import train
    from lowbit.build import load_run

    sizes: list[int] = []

    def recording(*args, **kwargs):  # the real loader, its result's image size recorded
        data = load_dataset(*args, **kwargs)
        sizes.append(data.train.image_size)
        return data

    monkeypatch.setattr(lowbit.api, "load_dataset", recording)
    root = make_folder(tmp_path / "imgs", per_class=8)
    base = {"model": {"name": "small_cnn", "width": 0.25},
            "data": {"name": f"folder:{root}", "image_size": 16, "batch_size": 8},
            "train": {"epochs": 1, "progress": False}}
    assert train(load_run(base=base), run_path=tmp_path / "run")["epochs"] == 1
    assert sizes == [16]
    with pytest.raises(Exception, match="image_size must be in 8..1024"):
        load_run(base={"data": {"image_size": 4}})


def test_a_torch_save_file_is_refused_with_what_to_do(tmp_path: Path, capsys) -> None:
    from lowbit.cli import main

    path = tmp_path / "weights.pt"
    torch.save(_net().state_dict(), path)
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a PyTorch file (torch.save)" in err and "weights_only=True" in err
    assert "lowbit.api.fit" in err and "truncated" not in err
    # the way it names works: the state dict loads into the model and fit(epochs 0) writes one
    model = _net()
    model.load_state_dict(torch.load(path, weights_only=True))
    out = fit(model, _data(64, 0), _data(64, 1), config={"train": {"epochs": 0}},
              run_dir=tmp_path / "imported")
    assert (tmp_path / "imported" / "final.safetensors").is_file() and out["epochs"] == 0
