"""The build layer: a config (plain data) resolved, once, into a run: method, schedule, model.

    run = load_run(config_file="experiments/inq/inq_w3_resnet20_cifar10.yaml",
                   overrides=["quant.weight.bits=4"])
    run.recipe          # the INQ recipe, its typed config in run.recipe.cfg
    run.phases          # [Phase('step 1/8', 1), ...]
    model = build_model(run, num_classes=10, in_channels=3)   # float + init + recipe.prepare

`resolve` validates the `quant:` section against its method (old keys migrate with a warning),
writes the canonical section back into the config, and settles `train.epochs`: a method whose
schedule fixes the length (INQ's steps, GDRQ's stages) sets it, and an explicit different
`train.epochs` is an error naming both values. Everything downstream takes a `Run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lowbit.config import RunConfig, build_config
from lowbit.engine import checkpoint as ckpt
from lowbit.engine.callbacks import Phase
from lowbit.models import create_model
from lowbit.recipes import Recipe, parse_quant_section, quant_section
from lowbit.schema import ConfigError

DEFAULT_EPOCHS = 200  # a float run that names no length


@dataclass
class Run:
    """A validated run: its config (canonical, serialisable) and its method's recipe."""

    cfg: RunConfig
    recipe: Recipe | None

    @property
    def phases(self) -> list[Phase]:
        epochs = self.cfg.train.epochs
        if self.recipe is None:
            return [Phase("train", epochs or 0)]
        return self.recipe.phases(epochs)

    @property
    def callbacks(self) -> list[Any]:
        return [self.recipe] if self.recipe is not None else []


def resolve(cfg: RunConfig) -> Run:
    """Validate the method section once and settle the schedule (see the module docstring)."""
    recipe = parse_quant_section(cfg.quant) if cfg.quant is not None else None
    fixed = recipe.fixed_epochs() if recipe is not None else None
    if recipe is not None and fixed is not None:
        if cfg.train.epochs is not None and cfg.train.epochs != fixed:
            raise ConfigError(
                f"train.epochs={cfg.train.epochs} conflicts with method {recipe.name}, whose "
                f"schedule fixes {fixed} epochs: drop train.epochs or change the method's "
                f"schedule knobs")
        cfg.train.epochs = fixed
    elif cfg.train.epochs is None:
        cfg.train.epochs = DEFAULT_EPOCHS
    cfg.quant = quant_section(recipe) if recipe is not None else None
    return Run(cfg, recipe)


def load_run(
    base: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Run:
    """defaults < `base` < `config_file` < `overrides`, resolved."""
    return resolve(build_config(base, config_file, overrides))


def float_model(cfg: RunConfig, num_classes: int, in_channels: int,
                trusted: bool = True) -> nn.Module:
    """The float model the config names (untrained); `trusted=False` for a config read from a
    file (a user's `module:callable` must then be trusted first, see lowbit.models)."""
    m = cfg.model
    return create_model(m.name, num_classes=num_classes, in_channels=in_channels, width=m.width,
                        trusted=trusted, **m.kwargs)  # fmt: skip


def build_model(run: Run, num_classes: int, in_channels: int, init: bool = True,
                trusted: bool = True) -> nn.Module:
    """The run's model: float, initialised from `train.init` (if `init`), prepared by its
    method (the method's layers in place, untrained when `init` is False)."""
    model = float_model(run.cfg, num_classes, in_channels, trusted)
    if init and run.cfg.train.init:
        tensors, _ = ckpt.load_checkpoint(run.cfg.train.init)
        ckpt.load_model_state(model, ckpt.split_prefix(tensors, "model"), run.cfg.train.init)
    if run.recipe is not None:
        model = run.recipe.prepare(model)
    return model
