"""The recipe base: one quantization spec for every method, and a callback with phases.

Every `quant:` section has the same shape:

    quant:
      method: inq                      # a registered recipe
      weight: {name: inq, bits: 3}     # weight quantizer spec (merged over the method's default)
      act: null                        # activation quantizer spec (merged likewise), or null
      rules: null                      # optional ordered {regex: spec | null}; specs merge too
      keep_float: none                 # first_last | none: the first conv / last layer in float?
      bn_recalibration_batches: 100    # re-estimate BatchNorm statistics after training
      epochs_per_step: 2               # ... then the method's own procedure knobs

`bits` lives only inside the weight and act specs. A method supplies defaults for its quantizers
(a partial spec such as `{bits: 3}` is merged over them) and keeps only its procedure knobs.

A recipe is a `Callback` with three more duties: `prepare(model)` puts its layers in place,
`phases()` lays out its training (INQ: one phase per partition step; GDRQ: reshape, then
quantize), and `convert(model)` returns the deployable model that export packs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn

from lowbit.engine.callbacks import Callback, LoopState, Phase, recalibrate_bn
from lowbit.quant.registry import get_quantizer
from lowbit.registry import Registry
from lowbit.schema import ConfigError, require
from lowbit.transform import QuantizationReport, every_layer_rules, quantize_model

KeepFloat = Literal["first_last", "none"]
# The learning rate and schedule `lowbit quantize` fine-tunes with (a method that fixes its own
# length, like INQ's steps, uses just these; the others add train.epochs).
FINETUNE_SCHEDULE: dict[str, dict[str, Any]] = {
    "optim": {"lr": 0.005},
    "schedule": {"name": "cosine", "warmup_epochs": 0.0, "min_lr": 1.0e-5},
}


def merge_spec(default: dict[str, Any] | None, given: Any) -> dict[str, Any] | None:
    """A quantizer spec: `given` merged over `default` (same quantizer, or `given` names none).

    `given` None means float (no quantizer). A `given` that names another quantizer replaces
    the default whole.
    """
    if given is None:
        return None
    if not isinstance(given, dict):
        raise ConfigError(f"a quantizer spec must be a mapping, got {given!r}")
    if default is None or given.get("name", default["name"]) != default["name"]:
        return dict(given)
    return {**default, **given}


@dataclass
class QuantConfig:
    """The part of every `quant:` section that is the same for all methods."""

    weight: dict[str, Any] | None = None
    act: dict[str, Any] | None = None
    rules: dict[str, Any] | None = None
    keep_float: KeepFloat = "first_last"
    # Quantized weights oscillate between levels from step to step (latent weights sit at the
    # decision thresholds), so the running BatchNorm statistics average over networks that no
    # longer exist; re-estimating them on N training batches after training, with the final
    # weights, is the remedy of Nagel et al. 2022 ("Overcoming oscillations in QAT"). Measured
    # on the LBW 2-bit row: 80.00 % -> 90.48 % test top-1 with 100 batches
    # (benchmarks/results/lbw_w2_resnet20_cifar10.json). 0 switches it off.
    bn_recalibration_batches: int = 100

    def validate(self) -> None:
        require(self.bn_recalibration_batches >= 0, "bn_recalibration_batches must be >= 0")
        for what in ("weight", "act"):
            spec = getattr(self, what)
            if spec is not None:
                _check_spec(spec, what)
        for key, spec in (self.rules or {}).items():
            require(spec is None or isinstance(spec, dict), f"rules.{key}: a spec or null")
            for what in ("weight", "act"):
                if isinstance(spec, dict) and spec.get(what) is not None:
                    _check_spec(spec[what], f"rules.{key}.{what}")


def _check_spec(spec: Any, what: str) -> None:
    """Build the quantizer once, so a bad spec fails when the config loads."""
    require(isinstance(spec, dict) and "name" in spec, f"{what}: a quantizer spec needs a name")
    try:
        get_quantizer(spec)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what}: {exc}") from exc


class Recipe(Callback):
    """A method. Subclasses set `name`, `config_class`, `default_weight`/`default_act`."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[QuantConfig]] = QuantConfig
    default_weight: ClassVar[dict[str, Any] | None] = None
    default_act: ClassVar[dict[str, Any] | None] = None
    weight_names: ClassVar[tuple[str, ...] | None] = None  # quantizers the method works with
    # What `lowbit quantize` fine-tunes with, over the float run's own schedule (a float run's
    # 160 epochs at lr 0.1 would undo the pretraining); a method that fixes its length leaves
    # out train.epochs.
    finetune: ClassVar[dict[str, dict[str, Any]]] = {"train": {"epochs": 15}, **FINETUNE_SCHEDULE}

    def __init__(self, cfg: QuantConfig) -> None:
        self.cfg = cfg

    # ---- what a method overrides -------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        """The model with the method's layers in place (modifies `model`)."""
        return self.quantize(model).model

    def fixed_epochs(self) -> int | None:
        """Epochs the method's own schedule fixes (INQ's steps), or None: `train.epochs`."""
        return None

    def phases(self, epochs: int | None = None) -> list[Phase]:
        """The training laid out as phases; `epochs` is the run's length (for methods that
        fix none)."""
        total = self.fixed_epochs()
        return [Phase("train", (epochs or 0) if total is None else total)]

    def convert(self, model: nn.Module) -> nn.Module:
        """The deployable model after training (what export packs)."""
        return model

    def on_fit_end(self, state: LoopState) -> None:
        """Training is over: re-estimate BatchNorm statistics with the final weights (a method
        that changes its model at the end does so first, then calls this)."""
        recalibrate_bn(state, self.cfg.bn_recalibration_batches)

    # ---- shared ------------------------------------------------------------------------
    def quantize(self, model: nn.Module) -> QuantizationReport:
        """Convert `model` in place: the user's rules, else every layer or all but the first
        conv and the last layer (`keep_float`), with the method's weight/act specs."""
        if self.cfg.rules is not None:
            rules = {k: self._rule_spec(v) for k, v in self.cfg.rules.items()}
            return quantize_model(model, rules, inplace=True)
        spec = {"weight": self.cfg.weight, "act": self.cfg.act}
        if self.cfg.keep_float == "none":
            return quantize_model(model, every_layer_rules(model, spec), inplace=True)
        return quantize_model(model, inplace=True, **spec)

    def _rule_spec(self, spec: dict[str, Any] | None) -> dict[str, Any] | None:
        """A rule's spec merged over the method's: a side it leaves out takes the method's."""
        if spec is None:
            return None
        return {side: merge_spec(getattr(self.cfg, side), spec[side]) if side in spec
                else getattr(self.cfg, side) for side in ("weight", "act")}


RECIPES: Registry[type[Recipe]] = Registry("method")


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: register a Recipe subclass under its `name`."""
    return RECIPES.add(cls.name, cls)


def config_fields(cls: type[QuantConfig]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}
