"""The one place where a study run becomes a lowbit run config (`build_config(base=...)`).

Every run of a study shares the plan's `schedule:` block (train / optim / schedule / data
settings) and differs only in model width, seed and the per-layer weight bits. Weights use
1 -> `binary`, 2 -> `ternary` (per channel on depthwise convs), 3..8 -> signed `uniform`
(`lowbit.study.size.weight_spec`);
activations stay float, as in the paper ("weight bitwidth", storage is the target), so every
difference between runs is the weight storage. Quantization is plain QAT (`method: qat`) with
exact-name rules, so first/last layers and mixed tables all use the same mechanism.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from typing import Any

from lowbit.study.size import quant_rules


def run_config(
    family: Mapping[str, Any],
    schedule: Mapping[str, Any],
    width: float,
    seed: int,
    table: Mapping[str, int] | None,
    name: str,
    depthwise: Collection[str] = (),
) -> dict[str, Any]:
    """The plain-data run config of one study run.

    Args:
        family: `{model: zoo name, kwargs: {...}}` of the plan.
        schedule: the plan's shared settings: any of `data`, `train`, `optim`, `schedule`,
            `out_dir` sections, copied as they are.
        width: the model's width multiplier.
        seed: `train.seed`.
        table: bits per conv/linear layer (32 = float), or None for the float model.
        name: the run's name (also its folder name).
        depthwise: the names of the model's depthwise convs (`lowbit.study.size.depthwise_names`).

    Returns:
        A dict for `lowbit.config.build_config(base=...)`.
    """
    cfg: dict[str, Any] = copy.deepcopy(dict(schedule))
    cfg["model"] = {"name": family["model"], "width": float(width),
                    "kwargs": dict(family.get("kwargs") or {})}
    cfg.setdefault("train", {})["seed"] = int(seed)
    cfg["name"] = name
    if table is not None:
        cfg["quant"] = {"method": "qat", "rules": quant_rules(table, depthwise)}
    return cfg
