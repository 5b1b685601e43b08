"""A recipe runs in a plain PyTorch loop a user writes, with the same result as `lowbit train`."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn.functional as F

from lowbit.api import train
from lowbit.build import load_run
from lowbit.data import BatchLoader, load_dataset
from lowbit.engine import LoopState, load_checkpoint
from lowbit.engine.checkpoint import load_model_state, split_prefix
from lowbit.models import create_model
from lowbit.recipes import create_recipe

INQ = {"weight": {"bits": 4}, "portions": [0.5, 0.75, 1.0], "epochs_per_step": 1}


def _config(tmp_path: Path, init: Path | None, quant: dict | None) -> dict:
    cfg = {
        "model": {"name": "small_cnn", "width": 0.25},
        "data": {"name": "synthetic", "batch_size": 64},
        "optim": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": False,
                  "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"seed": 3, "progress": False, "init": str(init) if init else None},
        "out_dir": str(tmp_path),
    }
    if quant is None:
        cfg["train"]["epochs"] = 2
    else:
        cfg["quant"] = {"method": "inq", **quant}
    return cfg


def plain_loop(init: Path, seed: int) -> dict[str, torch.Tensor]:
    """What a user writes: their model, their optimizer, their batches, the recipe's hooks."""
    torch.manual_seed(seed)
    data = load_dataset("synthetic")
    model = create_model("small_cnn", num_classes=4, in_channels=3, width=0.25)
    tensors, _ = load_checkpoint(init)
    load_model_state(model, split_prefix(tensors, "model"), init)
    loader = BatchLoader(data.train, 64, train=True, seed=seed)

    recipe = create_recipe("inq", **INQ)
    model = recipe.prepare(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def batches(n: int):  # calibration batches, drawn as lowbit's trainer draws them
        loader.set_epoch(state.epoch)
        return itertools.islice(iter(loader), n)

    state = LoopState(model, opt, batches=batches)
    recipe.on_fit_start(state)
    for phase in recipe.phases():
        recipe.on_phase_start(state, phase)
        for _ in range(phase.epochs):
            loader.set_epoch(state.epoch)
            model.train()
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                recipe.before_step(state)
                opt.step()
                recipe.after_step(state)
            state.epoch += 1
    recipe.on_fit_end(state)
    return recipe.convert(model).state_dict()


def test_inq_in_a_plain_loop_equals_lowbit_train(tmp_path: Path) -> None:
    train(load_run(base=_config(tmp_path, None, None)), run_path=tmp_path / "float")
    init = tmp_path / "float" / "final.safetensors"
    train(load_run(base=_config(tmp_path, init, INQ)), run_path=tmp_path / "inq")
    tensors, _ = load_checkpoint(tmp_path / "inq" / "final.safetensors")
    ours = split_prefix(tensors, "model")
    theirs = plain_loop(init, seed=3)
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    # and the weights really are INQ's: every conv/linear weight is 0 or +-2^k
    w = theirs["conv1.weight"] if "conv1.weight" in theirs else next(
        v for k, v in theirs.items() if k.endswith("weight") and v.dim() == 4)
    nz = w[w != 0].abs()
    assert torch.equal(torch.exp2(torch.log2(nz).round()), nz)
