"""Mixed-precision baselines: per-layer bits tables for `quantize_model` rules.

(a) `greedy_bits`: the paper's baseline, "the smallest bits per layer that keep accuracy"
    (spec §6.4). From the trained float model, every searched layer starts at 8 bits; then for
    each level 4, 2, 1 and each layer (in order) still at the level above, the layer is lowered,
    the model is fine-tuned for a few steps, and the change is kept if held-out top-1 stays
    within `tolerance` points of the reference, else undone (weights and BN restored). The
    reference (`reference:`) is by default the starting point itself, every layer at 8 bits
    after the same short fine-tune ("start"): the fine-tune alone moves a converged model's
    top-1 by about as much as the tolerance, so measured against the untouched float model
    ("float", the literal reading of the paper's rule) no layer may ever leave 8 bits
    (ResNet-20, 6 epochs: the all-8-bit start scored 81.52 after its fine-tune, float 82.10,
    and all 20 steps were undone). Both top-1s are in the search's step log.
(b) `sensitivity`: per layer and bit-width, the increase of held-out loss when only that layer
    is quantized (no fine-tuning); `lowbit.study.knapsack` then picks the bits that minimise
    the summed increase under a size budget.

Both searches run once per seed on the float model of the plan's `search_width`; their tables
are by layer name, so they apply at any width. At a budget, the greedy table gets the width
that makes it match the budget (`solve_width` with a table); the knapsack runs at the width of
the plan's `anchor_bits` uniform model at that budget (so every uniform table at anchor bits is
feasible and the knapsack can only trade within it), its layer sizes counted at that width.

Held-out images are the validation split of the training set (`with_validation`), never the
test set. The first and last layers keep the plan's `first_last_bits` and are not searched.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.data import BatchLoader, ImageData
from lowbit.engine.device import autocast
from lowbit.engine.evaluate import evaluate
from lowbit.quant.base import Quantizer
from lowbit.quant.registry import get_quantizer
from lowbit.study.size import depthwise_names, is_depthwise, quant_rules, weight_spec
from lowbit.transform import quantize_model

log = logging.getLogger(__name__)

LEVELS = (8, 4, 2, 1)


@dataclass
class GreedySettings:
    """Knobs of the greedy search (plan `baselines.greedy:`)."""

    tolerance: float = 0.5  # top-1 points below the reference still accepted
    reference: str = "start"  # "start": the all-8-bit model after its fine-tune; "float"
    finetune_steps: int = 50
    lr: float = 0.01
    batch_size: int = 128
    eval_images: int = 5000
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.reference not in ("start", "float"):
            raise ValueError(f"greedy reference must be 'start' or 'float', got "
                             f"{self.reference!r}")


def greedy_bits(float_model: nn.Module, table: Mapping[str, int], searched: Sequence[str],
                train: ImageData, val: ImageData, settings: GreedySettings,
                seed: int = 0) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The greedy table (searched layers lowered, others as in `table`) and its step log."""
    val = _head(val, settings.eval_images)
    float_top1 = evaluate(float_model, val, 500, settings.bf16)["top1"]
    bits = {**table, **dict.fromkeys(searched, LEVELS[0])}
    model = quantize_model(float_model, quant_rules(bits, depthwise_names(float_model))).model
    tuner = _Tuner(model, train, settings, seed)
    tuner.run()
    start_top1 = _top1(model, val, settings)
    ref = start_top1 if settings.reference == "start" else float_top1
    log.info("greedy start: all at %d bits, top1 %.2f after the fine-tune (float %.2f)",
             LEVELS[0], start_top1, float_top1)
    steps: list[dict[str, Any]] = [{"layer": None, "bits": LEVELS[0], "top1": start_top1,
                                    "float_top1": float_top1, "reference_top1": ref}]
    for level, lower in zip(LEVELS, LEVELS[1:], strict=False):
        for name in [n for n in searched if bits[n] == level]:
            step = _try_lower(model, tuner, name, level, lower, val, settings, ref)
            steps.append(step)
            bits[name] = lower if step["kept"] else level
    return bits, steps


def _try_lower(model: nn.Module, tuner: _Tuner, name: str, level: int, lower: int,
               val: ImageData, settings: GreedySettings, ref: float) -> dict[str, Any]:
    """Lower layer `name` to `lower` bits and fine-tune; undo (weights, BN, bits) unless held-out
    top-1 stays within the tolerance of `ref`. Returns the step's log row."""
    saved = copy.deepcopy(model.state_dict())
    _set_bits(model, name, lower)
    tuner.run()
    top1 = _top1(model, val, settings)
    kept = top1 >= ref - settings.tolerance
    log.info("greedy %s -> %d bits: top1 %.2f (%s %.2f) %s", name, lower, top1,
             settings.reference, ref, "kept" if kept else "undone")
    if not kept:
        _set_bits(model, name, level)
        model.load_state_dict(saved)
    return {"layer": name, "bits": lower, "top1": top1, "kept": kept}


@torch.no_grad()
def sensitivity(float_model: nn.Module, searched: Sequence[str], val: ImageData,
                eval_images: int = 2000, choices: Sequence[int] = LEVELS,
                bf16: bool = False) -> dict[str, dict[int, float]]:
    """{layer: {bits: held-out loss increase}} with only that layer's weight quantized."""
    val = _head(val, eval_images)
    model = copy.deepcopy(float_model).eval()
    ref = evaluate(model, val, 500, bf16)["loss"]
    out: dict[str, dict[int, float]] = {}
    for name in searched:
        param = model.get_submodule(name).get_parameter("weight")
        weight = param.detach().clone()
        out[name] = {}
        for bits in choices:
            param.copy_(_quantizer(bits, is_depthwise(model.get_submodule(name)))(weight))
            out[name][bits] = evaluate(model, val, 500, bf16)["loss"] - ref
        param.copy_(weight)
    return out


class _Tuner:
    """A few SGD steps on the training split, continuing one seeded stream of batches."""

    def __init__(self, model: nn.Module, train: ImageData, settings: GreedySettings,
                 seed: int) -> None:
        self.model, self.settings = model, settings
        self.loader = BatchLoader(train, settings.batch_size, train=True, seed=seed)
        self.batches = iter(self.loader)

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.batches)
        except StopIteration:
            self.loader.set_epoch(self.loader.epoch + 1)
            self.batches = iter(self.loader)
            return next(self.batches)

    def run(self) -> None:
        opt = torch.optim.SGD(self.model.parameters(), lr=self.settings.lr, momentum=0.9)
        self.model.train()
        for _ in range(self.settings.finetune_steps):
            x, y = self._next()
            with autocast(self.settings.bf16):
                loss = F.cross_entropy(self.model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()


def _quantizer(bits: int, depthwise: bool) -> Quantizer:
    spec = weight_spec(bits, depthwise)
    if spec is None:
        raise ValueError("the searches choose among quantized bit-widths (1..8), not float")
    return get_quantizer(spec)


def _set_bits(model: nn.Module, name: str, bits: int) -> None:
    module = model.get_submodule(name)
    module.weight_quant = _quantizer(bits, is_depthwise(module))


def _top1(model: nn.Module, val: ImageData, settings: GreedySettings) -> float:
    return float(evaluate(model, val, 500, settings.bf16)["top1"])


def _head(data: ImageData, count: int) -> ImageData:
    return data if count >= len(data) else data.subset(torch.arange(count))
