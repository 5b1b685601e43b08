"""Mixed-precision searches on a trained tiny float model (synthetic data)."""

from __future__ import annotations

import pytest
from torch import nn

from lowbit.api import load_model, train
from lowbit.config import build_config
from lowbit.data import DatasetSplits, load_dataset
from lowbit.study.mixed import GreedySettings, greedy_bits, sensitivity
from lowbit.study.size import full_table


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, DatasetSplits]:
    tmp = tmp_path_factory.mktemp("float")
    cfg = build_config(base={"model": {"name": "small_cnn", "width": 0.5},
                             "data": {"name": "synthetic", "batch_size": 32,
                                      "val_fraction": 0.25},
                             "train": {"epochs": 2, "progress": False}, "optim": {"lr": 0.05}})
    train(cfg, run_path=tmp / "run")
    model, _ = load_model(tmp / "run" / "final.safetensors")
    return model, load_dataset("synthetic").with_validation(0.25, 0)


SEARCHED = ["features.3", "features.6"]


def _search(trained: tuple[nn.Module, DatasetSplits], tolerance: float,
            reference: str = "start") -> tuple[dict[str, int], list[dict]]:
    model, data = trained
    assert data.val is not None
    settings = GreedySettings(tolerance=tolerance, finetune_steps=2, batch_size=32,
                              reference=reference)
    return greedy_bits(model, full_table(model, 8), SEARCHED, data.train, data.val, settings)


def _greedy(trained: tuple[nn.Module, DatasetSplits], tolerance: float) -> dict[str, int]:
    bits, steps = _search(trained, tolerance)
    assert steps[0]["layer"] is None and "float_top1" in steps[0]
    return bits


@pytest.mark.parametrize("reference, key", [("start", "top1"), ("float", "float_top1")])
def test_greedy_measures_against_its_reference(trained, reference: str, key: str) -> None:  # noqa: ANN001
    """Every step is kept or undone against the 8-bit start (default) or the float model."""
    _, steps = _search(trained, tolerance=0.0, reference=reference)
    ref = steps[0]["reference_top1"]
    assert ref == steps[0][key]
    assert all(s["kept"] == (s["top1"] >= ref) for s in steps[1:])


def test_greedy_reference_is_checked() -> None:
    with pytest.raises(ValueError, match="reference must be 'start' or 'float'"):
        GreedySettings(reference="best")


def test_greedy_lowers_everything_when_anything_goes(trained) -> None:  # noqa: ANN001
    bits = _greedy(trained, tolerance=100.0)
    assert [bits[n] for n in SEARCHED] == [1, 1]
    assert bits["features.0"] == bits["fc"] == 8  # first/last are not searched


def test_greedy_keeps_8_bits_when_nothing_may_drop(trained) -> None:  # noqa: ANN001
    assert [_greedy(trained, tolerance=-100.0)[n] for n in SEARCHED] == [8, 8]


def test_sensitivity_rows(trained) -> None:  # noqa: ANN001
    model, data = trained
    assert data.val is not None
    before = [p.clone() for p in model.parameters()]
    sens = sensitivity(model, SEARCHED, data.val, eval_images=64)
    assert set(sens) == set(SEARCHED) and all(set(v) == {8, 4, 2, 1} for v in sens.values())
    assert all(abs(sens[n][8]) < abs(sens[n][1]) + 1e-6 for n in SEARCHED)
    assert all((a == b).all() for a, b in zip(before, model.parameters(), strict=True))

