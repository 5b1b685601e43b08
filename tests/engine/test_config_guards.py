"""Config input that used to crash, hang or train silently wrong: one clear line each."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lowbit.build import load_run
from lowbit.cli import main
from lowbit.config import build_config, load_yaml
from lowbit.schema import ConfigError

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.parametrize(("text", "message"), [
    ("a: &a [*a]\n", "refers to itself"),
    ("model: &m {name: resnet20, kwargs: *m}\n", "refers to itself|undefined alias"),
    (BOMB, "alias bomb"),
    ("train: {epochs: 1}\ntrain: {epochs: 2}\n", "line 2: duplicate key 'train'"),
    ("model: {name: resnet20, name: vgg_small}\n", "duplicate key 'name'"),
    ("? [a, b]\n: 1\n", "must be a plain value"),
    ("model: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "mapping at the top level"),
    ("x: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
])
def test_bad_yaml_is_a_fast_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message) as info:
        load_yaml(path)
    assert time.perf_counter() - start < 5 and "\n" not in str(info.value)


def test_set_values_go_through_the_same_checks() -> None:
    with pytest.raises(ConfigError, match="--set train.seed: cannot parse"):
        build_config(overrides=["train.seed={a: 1, a: 2}"])


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lr=-5", "lr must be a finite number > 0"),
    ("optim.lr=.inf", "lr must be a finite number > 0"),
    ("optim.lr=.nan", "lr must be a finite number > 0"),
    ("schedule.min_lr=-5", "min_lr must be a finite number >= 0"),
    ("schedule.min_lr=.inf", "min_lr must be a finite number >= 0"),
    ("schedule.warmup_epochs=.inf", "warmup_epochs must be a finite"),
    ("optim.weight_decay=.inf", "weight_decay must be a finite"),
    ("optim.betas=[0.9,1.5]", "betas must be two values in"),
    ("model.width=1000", r"width must be in \(0, 64"),
    ("model.width=.nan", "width must be in"),
    ("train.seed=-1", r"seed must be in \[0, 4294967295\]"),
    ("train.seed=99999999999999999999", "seed must be in"),
    ("quant.method=[inq]", "unknown quant.method"),
    ("quant.method={a: 1}", "unknown quant.method"),
])
def test_values_that_would_train_wrong_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run(overrides=[override])


def test_cli_reports_them_in_one_line(capsys) -> None:
    assert main(["train", "--set", "schedule.min_lr=-5", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "min_lr must be a finite number >= 0" in err[0]
