"""GDRQ — Group-based Distribution Reshaping Quantization (Yu, Wen, Cheng, Sun, Han, Shi;
CVPRW 2020, "Low-bit Quantization Needs Good Distribution"; full version arXiv 1908.01477; spec §3).

Uniform-like distributions lose less under linear quantization than Gaussian/Laplace ones, so
GDRQ first *reshapes* weights and activations with Scale-Clip: clip at T = k * stat(tensor),
recomputed from the tensor itself (weights, every forward) or tracked by an EMA (activations,
frozen at evaluation). It then quantizes the clipped tensor uniformly: symmetric for weights
(Delta_w = T_w / (2^(b-1) - 1), so W2 is ternary {-T, 0, T}), unsigned for post-ReLU
activations (Delta_a = T_a / (2^b - 1)). Output filters are split into groups that each get their
own T (and so their own Delta_w); at inference every Delta_w(g) * Delta_a folds into the following
BatchNorm (`lowbit.export.fold.fold_bn`, spec §1.4), so groups cost nothing. Gradients: identity
STE for weights, STE masked to [0, T_a] for activations (`lowbit.quant.ScaleClip`).

Training, two stages as the paper's two-step analysis suggests (spec §3.2, §3.6 [R]):
  1. `reshape_epochs` of distribution reshaping: the forward pass uses clipped *float* weights and
     activations (ScaleClip `quantize=False`), so the network adapts to the clipped ranges;
  2. `quant_epochs` of quantization-aware fine-tuning with the same thresholds, quantized.
The recipe's phases are `reshape` and `quantize`; `on_phase_start` flips every ScaleClip's
`quantize` flag at the boundary (the stage lives in the recipe's checkpointed state), and the
learning-rate schedule restarts with the second phase. `ramp_steps` (default 0, the paper's
abrupt switch) [R] makes the switch gradual: during the first `ramp_steps` steps of stage 2 each
quantizer outputs clip(x) + m * (Q(x) - clip(x)) in training, m = s / ramp_steps at the
stage's s-th step (so step `ramp_steps` is fully quantized and `ramp_steps: 1` equals 0;
evaluation, and the BN re-estimation at the stage start, are always fully quantized). `m` is a
Python float that changes every step: under `torch.compile` a ramp recompiles, so leave it 0
there.
`prepare()` returns the deployable (quantized) form, so a checkpoint rebuilt by `load_model`
evaluates quantized; the recipe switches to clip-only when training starts in stage 1.

Config: `weight: {name: scaleclip, bits, k (k_w), stat, group_size, learnable, momentum}`,
`act: {name: scaleclip, bits, k (k_a), ...}` or null (float activations); procedure knobs
`reshape_epochs`, `quant_epochs`, `scale_clip` (the ablation switch), and the common
`bn_recalibration_batches`.

Reconstruction choices (spec tags):
- stat = mean|x| with k_w = 2 [S, spec §11 confirms mean|W|]; std as an option [R]. k_a > k_w
  because activation statistics drift [S] (spec: 3; here 14, measured, see below); EMA momentum
  0.99, first batch initialises [V GDRQ-mx].
- Groups are contiguous blocks of `group_size` output filters [V GDRQ-mx]. Default 8 [R]: ResNet
  widths (16/32/64, x0.5: 8/16/32) and most CNN widths are multiples of 8, so every layer gets
  C/8 groups with 8 filters * fan-in weights each, enough for a stable mean|W_g| at fan-in 3x3x16;
  it sits between per-layer and per-channel in the sweep the spec suggests {per-layer, 8, 4, 1}.
  A layer whose width `group_size` does not divide uses the largest divisor below it (logged and
  listed in `fallbacks`, and in the checkpoint's recipe state).
- Thresholds are statistics, not trained, by default (as both re-implementations) [V]; the
  option `learnable` trains a per-group log T initialised from the statistic [R] (weights: at
  `prepare`, from the loaded weights; activations: from the first training batch).
- First conv and last linear layer stay float unless `keep_float: none` [R, spec §3.6]; even
  then the first conv's input (the normalised image, signed, already 8-bit data) stays float,
  because Scale-Clip's activation form is unsigned.
- `scale_clip: false` is the "without Scale-Clip" ablation: the same quantizer, groups, EMA, bits
  and folding path, with T = max|x| (stat "max", k = 1) instead of k * mean|x|: nothing is clipped,
  so it is plain max-range uniform quantization; stage 1 then is a plain float fine-tune, which
  keeps the epoch budget identical.
- Residual additions stay float (the paper's treatment is unknown) [R, spec §3.9].
- `bn_recalibration_batches` (default 100) [R, measured]: clipping (and later quantizing) a
  trained network shrinks every layer's output, so the BatchNorm running statistics it was
  trained with no longer fit, and each stage would start near chance level. At the start of each
  stage and at the end of training (which also makes a calibration-only run with
  `reshape_epochs: 0, quant_epochs: 0` work) the recipe re-estimates BN statistics on that many
  training batches with the stage's forward, which also initialises the activation EMAs;
  weights are untouched.
  Measured (benchmarks/results/gdrq_scaleclip_sweep.json): the float ResNet-20 calibrated to
  W2A4 at the chosen constants scores 77.9 % on held-out training images with recalibration and
  10.1 % (chance) without it. 0 disables.
- k_w, k_a for the shipped ResNet-20 rows were chosen by that validation sweep (W2: k_w = 2,
  W4: k_w = 4; A4: k_a = 14, A2: k_a = 4): mean(A) of a post-ReLU tensor counts its zeros, so
  k_a = 3 clips most of the positive range (53.2 % vs 77.9 % at W2A4). The recipe's defaults
  are the sweep's choice at the default W2A4 (k_w = 2, k_a = 14; the spec's k_a = 3 stays the
  `scaleclip` quantizer's own default); other networks and bit-widths should sweep them, e.g.
  `lowbit sweep --param quant.act.k` with `reshape_epochs=0 quant_epochs=0` (calibration only).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.engine.callbacks import LoopState, Phase, recalibrate_bn
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quant import functional as F
from lowbit.quant.uniform import ScaleClip
from lowbit.recipes.base import FINETUNE_SCHEDULE, QuantConfig, Recipe, register_recipe
from lowbit.schema import require
from lowbit.transform import every_layer_rules, quantize_model

log = logging.getLogger(__name__)

RESHAPE, QUANTIZE = 1, 2  # the two training stages


@dataclass
class GDRQConfig(QuantConfig):
    """The `quant:` section for `method: gdrq` (see the module docstring for each choice).

    `act: null` keeps activations float; `weight.group_size: 0` or null is one group per layer;
    with `scale_clip: false`, the specs' `k` and `stat` are unused (T = max|x|).
    """

    reshape_epochs: int = 2
    quant_epochs: int = 28
    scale_clip: bool = True
    ramp_steps: int = 0

    def validate(self) -> None:
        super().validate()
        w_bits = (self.weight or {}).get("bits", 2)
        require(2 <= w_bits <= 8, f"weight.bits must be in 2..8 (codes fold into int8 "
                f"arithmetic), got {w_bits}")
        a_bits = (self.act or {}).get("bits", 4)
        require(1 <= a_bits <= 8, f"act.bits must be in 1..8, got {a_bits}")
        require(self.reshape_epochs >= 0 and self.quant_epochs >= 0 and self.ramp_steps >= 0,
                "reshape_epochs, quant_epochs and ramp_steps must be >= 0")

    def spec(self, side: str, group_size: int | None = None) -> dict[str, Any] | None:
        """ScaleClip config for weights (with a layer's resolved group size) or activations."""
        spec = getattr(self, side)
        if spec is None:
            return None
        spec = dict(spec)
        if side == "weight":
            spec["group_size"] = group_size
        if not self.scale_clip:
            spec.update(k=1.0, stat="max")
        return spec

    @property
    def group_size(self) -> int | None:
        return self.weight.get("group_size") if self.weight else None


def resolve_group_size(requested: int | None, channels: int) -> int | None:
    """The group size a layer of `channels` output filters uses; None means one group per layer.

    `requested` if it divides `channels`, else the largest divisor of `channels` below it;
    a size covering the whole layer becomes None (the same thing, stated once).
    """
    if not requested:
        return None
    size = max(d for d in range(1, min(requested, channels) + 1) if channels % d == 0)
    return None if size == channels else size


@register_recipe
class GDRQRecipe(Recipe):
    """Scale-Clip + group-wise quantization in two phases: reshape, then quantize."""

    name = "gdrq"
    config_class = GDRQConfig
    default_weight = {"name": "scaleclip", "bits": 2, "signed": True, "k": 2.0, "stat": "mean",
                      "group_size": 8, "momentum": 0.99, "learnable": False}
    default_act = {"name": "scaleclip", "bits": 4, "signed": False, "k": 14.0, "stat": "mean",
                   "momentum": 0.99, "learnable": False}
    weight_names = ("scaleclip",)
    finetune = FINETUNE_SCHEDULE  # the method's schedule fixes the length
    cfg: GDRQConfig

    def __init__(self, cfg: GDRQConfig) -> None:
        super().__init__(cfg)
        self.stage = QUANTIZE
        self.quant_start = 0  # the step stage 2 began at (for the switch-on ramp)
        self.quantizers: list[ScaleClip] = []
        self.group_sizes: dict[str, int | None] = {}  # layer -> group size it uses
        self.fallbacks: dict[str, int | None] = {}  # layers whose width group_size misses

    # ---- recipe ------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        spec = {"weight": self.cfg.spec("weight"), "act": self.cfg.spec("act")}
        if self.cfg.rules is not None:
            model = super().prepare(model)
        elif self.cfg.keep_float == "none":
            model = quantize_model(model, self._all_layer_rules(model, spec), inplace=True).model
        else:
            model = quantize_model(model, inplace=True, **spec).model
        for name, layer in model.named_modules():
            if isinstance(layer, QuantConv2d | QuantLinear) and isinstance(layer.weight_quant,
                                                                            ScaleClip):
                self._set_groups(name, layer)
        if self.fallbacks:
            used = ", ".join(f"{n}: {s or 'per layer'}" for n, s in self.fallbacks.items())
            log.warning("gdrq: group_size %d does not divide the width of %d layers; they use the "
                        "largest divisor below it: %s", self.cfg.group_size, len(self.fallbacks),
                        used)
        self.quantizers = [m for m in model.modules() if isinstance(m, ScaleClip)]
        for q in self.quantizers:
            if q.learnable and q.has_uninitialized_params():
                _defer_threshold_init(q)
        self._set_stage(QUANTIZE)
        return model

    def convert(self, model: nn.Module) -> nn.Module:
        for q in model.modules():
            if isinstance(q, ScaleClip):
                q.set_enabled(True)
        return model

    def fixed_epochs(self) -> int:
        return self.cfg.reshape_epochs + self.cfg.quant_epochs

    def phases(self, epochs: int | None = None) -> list[Phase]:
        return [Phase("reshape", self.cfg.reshape_epochs, index=0),
                Phase("quantize", self.cfg.quant_epochs, index=1)]

    def _all_layer_rules(self, model: nn.Module, spec: dict[str, Any]) -> dict[Any, Any]:
        """Every conv/linear quantized; the first conv keeps a float (image) input."""
        rules: dict[Any, Any] = {}
        first = next((n for n, m in model.named_modules() if type(m) is nn.Conv2d), None)
        if first:  # "" would be the model itself: a bare conv has no image-input question
            rules[re.escape(first)] = {"weight": spec["weight"]}
        rules.update(every_layer_rules(model, spec))
        return rules

    def _set_groups(self, name: str, layer: QuantConv2d | QuantLinear) -> None:
        """Give the layer a weight quantizer whose groups fit its width (see resolve_group_size)."""
        channels = layer.weight.shape[0]
        size = resolve_group_size(self.cfg.group_size, channels)
        self.group_sizes[name] = size
        if self.cfg.group_size and channels % self.cfg.group_size:
            self.fallbacks[name] = size
        spec = self.cfg.spec("weight", size) or {}
        quantizer = ScaleClip(**{k: v for k, v in spec.items() if k != "name"})
        if quantizer.learnable:  # materialise log T from the (possibly pretrained) weight now
            quantizer.initialize_parameters(layer.weight.detach())
        layer.weight_quant = quantizer

    # ---- callbacks ---------------------------------------------------------------------
    def _set_stage(self, stage: int) -> None:
        self.stage = stage
        for q in self.quantizers:
            q.set_enabled(stage == QUANTIZE)

    def _set_mix(self, steps_done: int) -> None:
        """The switch-on ramp's blend for the next step, `steps_done` steps into stage 2."""
        ramp = self.cfg.ramp_steps
        mix = 1.0 if not ramp or steps_done >= ramp else (steps_done + 1) / ramp
        for q in self.quantizers:
            q.mix = mix

    def on_fit_start(self, state: LoopState) -> None:
        self._set_stage(RESHAPE if state.epoch < self.cfg.reshape_epochs else QUANTIZE)
        self._set_mix(state.step - self.quant_start)

    def on_phase_start(self, state: LoopState, phase: Phase) -> None:
        stage = RESHAPE if phase.index == 0 else QUANTIZE
        log.info("gdrq: epoch %d starts stage %d (%s)", state.epoch, stage,
                 "reshaping, clip only" if stage == RESHAPE else "quantization-aware")
        self._set_stage(stage)
        if stage == QUANTIZE:
            self.quant_start = state.step
        if phase.epochs:  # BN statistics for the quantized forward that evaluation runs
            self._set_mix(self.cfg.ramp_steps)
            recalibrate_bn(state, self.cfg.bn_recalibration_batches)
        self._set_mix(0)

    def after_step(self, state: LoopState) -> None:
        if self.stage == QUANTIZE and self.cfg.ramp_steps:
            self._set_mix(state.step + 1 - self.quant_start)

    def on_fit_end(self, state: LoopState) -> None:
        self._set_stage(QUANTIZE)  # the final evaluation and checkpoint are quantized
        self._set_mix(self.cfg.ramp_steps)
        super().on_fit_end(state)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {"stage": self.stage, "quant_start": self.quant_start,
                    "group_sizes": dict(self.group_sizes), "fallbacks": dict(self.fallbacks)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._set_stage(int(meta["stage"]))
        self.quant_start = int(meta.get("quant_start", 0))


def _defer_threshold_init(q: ScaleClip) -> None:
    """Materialise a learnable activation clip now (T = 1), set it from the first training batch.

    Its statistic needs data, but the trainer touches every parameter before the first batch
    (optimizer groups, channels_last), which an uninitialised lazy parameter cannot take.
    `num_batches_tracked` (unused by learnable clips otherwise) records that the data-driven
    initialisation happened, so it survives checkpoints and a resumed run does not redo it.
    """
    q.log_threshold.materialize(())
    with torch.no_grad():
        q.log_threshold.zero_()
    q.register_forward_pre_hook(_init_from_batch)


@torch.no_grad()
def _init_from_batch(q: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
    # uses only its `q` argument, never a closure: a deep-copied model gets its own q here
    assert isinstance(q, ScaleClip)
    if q.training and int(q.num_batches_tracked) == 0:
        t = F.scale_clip_threshold(args[0], q.clip_k, q.stat)
        q.log_threshold.copy_(t.clamp_min(torch.finfo(t.dtype).tiny).log())
        q.num_batches_tracked += 1


