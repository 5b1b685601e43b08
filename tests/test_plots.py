"""Distribution histograms (GDRQ view) and their `lowbit inspect --hist` wiring."""

import logging
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.api import train
from lowbit.config import build_config
from lowbit.engine import LoopState
from lowbit.quant import ScaleClip
from lowbit.recipes import parse_quant_section
from lowbit.tools.inspection import _test_batch, inspect_target
from lowbit.tools.plots import distribution_histograms

pytest.importorskip("matplotlib")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def gdrq_net(reshaping: bool) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    recipe = parse_quant_section({"method": "gdrq", "weight": {"group_size": 4},
                                  "bn_recalibration_batches": 0})
    model = recipe.prepare(net)
    if reshaping:
        recipe.on_phase_start(LoopState(model), recipe.phases()[0])  # the reshape stage
    return model


@pytest.mark.parametrize("reshaping", [False, True])
def test_weight_and_input_rows_per_quantized_layer(tmp_path: Path, reshaping: bool) -> None:
    model = gdrq_net(reshaping)
    batch = torch.randn(4, 3, 6, 6)
    with_acts = distribution_histograms(model, batch, tmp_path / "a")
    weights_only = distribution_histograms(model, None, tmp_path / "w")
    assert [p.name for p in with_acts] == ["2.png", "4.png"]  # first conv and last linear: float
    for a, w in zip(with_acts, weights_only, strict=True):
        (wa, ha), (ww, hw) = png_size(a), png_size(w)
        assert wa == ww and ha > 1.5 * hw  # two rows (weight, input) against one
    # plotting works on a copy: a reshaping-stage model keeps clipping without quantizing
    assert all(q.quantize != reshaping for q in model.modules() if isinstance(q, ScaleClip))


def test_inspect_hist_draws_checkpoint_layers(tmp_path: Path) -> None:
    cfg = build_config(base={
        "model": {"name": "small_cnn", "width": 0.25}, "data": {"name": "synthetic"},
        "train": {"progress": False},
        "quant": {"method": "gdrq", "reshape_epochs": 1, "quant_epochs": 1,
                  "weight": {"group_size": 4}},
    })
    train(cfg, run_path=tmp_path / "run")
    inspect_target(tmp_path / "run" / "final.safetensors", hist_dir=tmp_path / "hist")
    pngs = sorted(p.name for p in (tmp_path / "hist").glob("*.png"))
    assert pngs == ["features.3.png", "features.6.png"]
    assert all(png_size(tmp_path / "hist" / p)[1] > 400 for p in pngs)  # with input rows


def test_no_dataset_files_skips_activations(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lowbit.tools.inspection"):
        batch = _test_batch("cifar10", {"data": {"data_dir": str(tmp_path / "absent")}})
    assert batch is None and "activation histograms skipped" in caplog.text
    synthetic = _test_batch("synthetic", {})
    assert synthetic is not None and synthetic.shape == (64, 3, 16, 16)
