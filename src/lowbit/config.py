"""The run configuration, as plain data: defaults < `--config file.yaml` < `--set a.b=c`.

A YAML file is validated into `RunConfig` at load time (see `lowbit.schema`). The `quant:`
section stays a mapping here; `lowbit.build` resolves it, once, into its method's typed config.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lowbit.data import list_datasets
from lowbit.models import is_user_model, list_models
from lowbit.schema import ConfigError, from_dict, require, to_dict
from lowbit.yamlio import YAMLError, safe_load

MAX_WIDTH = 64.0
MAX_SEED = 2**32 - 1  # data order uses seed * 100003 + epoch in a 64-bit generator seed


@dataclass
class ModelConfig:
    name: str = "resnet20"
    width: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        require(
            self.name in list_models() or is_user_model(self.name),
            f"unknown model {self.name!r}; choose one of {', '.join(list_models())}, or your "
            "own builder as package.module:callable",
        )
        require(0 < self.width <= MAX_WIDTH,
                f"width must be in (0, {MAX_WIDTH}] (a multiplier of every channel count; "
                f"{MAX_WIDTH}x ResNet-20 already holds 1.1e9 weights), got {self.width}")


@dataclass
class DataConfig:
    name: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    batch_size: int = 128
    eval_batch_size: int = 500
    augment: bool = True
    val_fraction: float = 0.0  # > 0: hold out this much of train; per-epoch metrics use it
    image_size: int = 32  # folder: datasets are resized to this (the others have their own)

    def validate(self) -> None:
        known = [n for n in list_datasets() if ":" not in n]
        require(
            self.name in known or self.name.startswith("folder:") or self.name == "user",
            f"unknown dataset {self.name!r}; choose one of {', '.join(known)} or folder:<path> "
            "(or pass your own data through lowbit.api.fit)",
        )
        require(8 <= self.image_size <= 1024, f"image_size must be in 8..1024, got "
                f"{self.image_size}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(self.eval_batch_size >= 1, "eval_batch_size must be >= 1")
        require(
            0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}"
        )


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_bn_and_bias: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])

    def validate(self) -> None:
        require(0 < self.lr < math.inf, f"lr must be a finite number > 0, got {self.lr}")
        require(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        require(0 <= self.weight_decay < math.inf,
                f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                f"betas must be two values in [0, 1), got {self.betas}")


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "step", "multistep", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 30
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr: float = 0.0

    def validate(self) -> None:
        require(0 <= self.warmup_epochs < math.inf,
                f"warmup_epochs must be a finite number >= 0, got {self.warmup_epochs}")
        require(self.step_size >= 1, "step_size must be >= 1")
        require(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}")
        require(0 <= self.min_lr < math.inf,
                f"min_lr must be a finite number >= 0, got {self.min_lr}")
        require(list(self.milestones) == sorted(self.milestones), "milestones must be increasing")


@dataclass
class TrainConfig:
    epochs: int | None = None  # None: the method's schedule, else DEFAULT_EPOCHS
    seed: int = 0
    bf16: bool = False
    channels_last: bool = False
    label_smoothing: float = 0.0
    eval_every: int = 1
    init: str | None = None
    threads: int | None = None
    save_every: int = 1
    save_every_steps: int | None = None  # also checkpoint inside an epoch, every N steps
    progress: bool = True
    metrics: list[Literal["csv", "tensorboard"]] = field(default_factory=list)  # + metrics.jsonl
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (cuda when there is one, else cpu)

    def validate(self) -> None:
        require(self.epochs is None or self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}")
        require(self.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None,
                f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        require(0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)")
        require(self.eval_every >= 1 and self.save_every >= 1, "eval_every/save_every must be >= 1")
        require(self.threads is None or self.threads >= 1, "threads must be >= 1")
        require(self.save_every_steps is None or self.save_every_steps >= 1,
                "save_every_steps must be >= 1 (or null: checkpoints at epoch ends only)")
        require(0 <= self.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {self.seed}")


@dataclass
class DistillConfig:
    """Knowledge distillation from a trained (float) checkpoint: the student's loss is
    `(1 - weight) * CE(s, y) + weight * T^2 * KL(softmax(t/T) || softmax(s/T))`, with the
    teacher's logits `t` computed once per batch, in eval mode, without gradients."""

    teacher: str = ""
    temperature: float = 4.0
    weight: float = 0.9

    def validate(self) -> None:
        require(bool(self.teacher), "teacher: give the teacher checkpoint's path")
        require(0 < self.temperature < 1e3,
                f"temperature must be in (0, 1000), got {self.temperature}")
        require(0 <= self.weight <= 1, f"weight must be in [0, 1], got {self.weight}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: dict[str, Any] | None = None
    distill: DistillConfig | None = None
    expected: dict[str, Any] | None = None
    out_dir: str = "runs"
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(to_dict(self))


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `tree['a']['b'] = value` for `dotted='a.b'`, creating mappings on the way."""
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=c` -> ('a.b', yaml value of c)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), safe_load(raw, f"--set {key}") if raw.strip() else None
    except YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} ({exc})") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = safe_load(path.read_text(), f"config file {path}") or {}
    except YAMLError as exc:
        raise ConfigError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def build_config(
    base: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """defaults < `base` < `config_file` < `overrides` ('a.b=c'), validated (but the `quant:`
    section, which `lowbit.build.resolve` checks against its method)."""
    tree: dict[str, Any] = {}
    for layer in (base or {}, load_yaml(config_file) if config_file else {}):
        _merge(tree, layer)
    for text in overrides or []:
        set_dotted(tree, *parse_override(text))
    return from_dict(RunConfig, tree)


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = value
