"""Metrics to CSV and TensorBoard on request (metrics.jsonl always)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lowbit.api import train
from lowbit.build import load_run
from lowbit.schema import ConfigError


def test_csv_and_tensorboard_hold_every_epoch(tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config(tmp_path, epochs=2, metrics=["csv", "tensorboard"], eval_every=2)
    train(load_run(base=cfg), run_path=tmp_path / "run")
    run = tmp_path / "run"
    jsonl = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[1]["train_loss"]) == pytest.approx(jsonl[1]["train_loss"])
    assert rows[0]["test_top1"] == "" and rows[1]["test_top1"] != ""  # union of columns
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train_loss")
    assert [e.step for e in loss] == [0, 1]
    assert loss[1].value == pytest.approx(jsonl[1]["train_loss"], rel=1e-6)


def test_unknown_sink_is_a_config_error(tmp_path: Path, tiny_config) -> None:
    with pytest.raises(ConfigError, match="train.metrics"):
        load_run(base=tiny_config(tmp_path, metrics=["wandb"]))
