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
The recipe is also the trainer hook that flips every ScaleClip's `quantize` flag at the stage
boundary; the stage lives in the hook state, and `phase()` restarts the LR schedule for stage 2.
`prepare()` returns the deployable (quantized) form, so a checkpoint rebuilt by `load_model`
evaluates quantized; the hook switches to clip-only when training starts in stage 1.

Reconstruction choices (spec tags):
- stat = mean|x| with k_w = 2 [S, spec §11 confirms mean|W|]; std as an option [R]. k_a > k_w
  because activation statistics drift [S] (spec: 3; here 14, measured, see below); EMA momentum
  0.99, first batch initialises [V GDRQ-mx].
- Groups are contiguous blocks of `group_size` output filters [V GDRQ-mx]. Default 8 [R]: ResNet
  widths (16/32/64, x0.5: 8/16/32) and most CNN widths are multiples of 8, so every layer gets
  C/8 groups with 8 filters * fan-in weights each, enough for a stable mean|W_g| at fan-in 3x3x16;
  it sits between per-layer and per-channel in the sweep the spec suggests {per-layer, 8, 4, 1}.
  A layer whose width `group_size` does not divide uses the largest divisor below it (logged and
  listed in `fallbacks`, and in the checkpoint's hook state).
- Thresholds are statistics, not trained, by default (as both re-implementations) [V]; the
  option `learnable` trains a per-group log T initialised from the statistic [R] (weights: at
  `prepare`, from the loaded weights; activations: from the first training batch).
- First conv and last linear layer stay float unless `quantize_first_last` [R, spec §3.6]; even
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
  stage (and at the end if no quantized epoch was trained, as in a calibration-only run with
  `reshape_epochs: 0, quant_epochs: 0`) the recipe re-estimates BN statistics on that many
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
  `lowbit sweep --param quant.k_a` with `reshape_epochs=0 quant_epochs=0` (calibration only).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from lowbit.engine.hooks import Hook
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quant import functional as F
from lowbit.quant.activation import ScaleClip
from lowbit.recipes import Recipe, register_recipe
from lowbit.schema import require
from lowbit.transform import every_layer_rules, quantize_model

if TYPE_CHECKING:
    from lowbit.engine.trainer import Trainer

log = logging.getLogger(__name__)

RESHAPE, QUANTIZE = 1, 2  # the two training stages


@dataclass
class GDRQConfig:
    """The `quant:` section for `method: gdrq` (see the module docstring for each choice).

    `act_bits: null` keeps activations float; `group_size: 0` or null is one group per layer;
    with `scale_clip: false`, `k_w`, `k_a` and `stat` are unused (T = max|x|).
    """

    weight_bits: int = 2
    act_bits: int | None = 4
    k_w: float = 2.0
    k_a: float = 14.0
    stat: Literal["mean", "std"] = "mean"
    group_size: int | None = 8
    learnable: bool = False
    momentum: float = 0.99
    reshape_epochs: int = 2
    quant_epochs: int = 28
    scale_clip: bool = True
    quantize_first_last: bool = False
    bn_recalibration_batches: int = 100

    def validate(self) -> None:
        require(2 <= self.weight_bits <= 8, f"weight_bits must be in 2..8, got {self.weight_bits}")
        require(self.act_bits is None or 1 <= self.act_bits <= 8,
                f"act_bits must be in 1..8 or null (float activations), got {self.act_bits}")
        require(self.k_w > 0 and self.k_a > 0, f"k_w and k_a must be > 0, got {self.k_w}, "
                f"{self.k_a}")
        require(self.group_size is None or self.group_size >= 0, "group_size must be >= 1, or "
                f"0/null for one group per layer; got {self.group_size}")
        require(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        require(self.reshape_epochs >= 0 and self.quant_epochs >= 0,
                "reshape_epochs and quant_epochs must be >= 0")
        require(self.bn_recalibration_batches >= 0, "bn_recalibration_batches must be >= 0")

    def weight_spec(self, group_size: int | None) -> dict[str, Any]:
        """ScaleClip config for a layer's weight with the group size resolved for that layer."""
        k, stat = (self.k_w, self.stat) if self.scale_clip else (1.0, "max")
        return {"name": "scaleclip", "bits": self.weight_bits, "signed": True, "k": k,
                "stat": stat, "group_size": group_size, "momentum": self.momentum,
                "learnable": self.learnable}

    def act_spec(self) -> dict[str, Any] | None:
        """ScaleClip config for a layer's (post-ReLU) input, or None for float activations."""
        if self.act_bits is None:
            return None
        k, stat = (self.k_a, self.stat) if self.scale_clip else (1.0, "max")
        return {"name": "scaleclip", "bits": self.act_bits, "signed": False, "k": k,
                "stat": stat, "momentum": self.momentum, "learnable": self.learnable}


def resolve_group_size(requested: int | None, channels: int) -> int | None:
    """The group size a layer of `channels` output filters uses; None means one group per layer.

    `requested` if it divides `channels`, else the largest divisor of `channels` below it;
    a size covering the whole layer becomes None (the same thing, stated once).
    """
    if not requested:
        return None
    size = max(d for d in range(1, min(requested, channels) + 1) if channels % d == 0)
    return None if size == channels else size


class GDRQRecipe(Recipe, Hook):
    """Scale-Clip + group-wise quantization, two stages; the recipe is its own trainer hook."""

    def __init__(self, cfg: GDRQConfig) -> None:
        self.cfg = cfg
        self.stage = QUANTIZE
        self.quantizers: list[ScaleClip] = []
        self.group_sizes: dict[str, int | None] = {}  # layer -> group size it uses
        self.fallbacks: dict[str, int | None] = {}  # layers whose width group_size misses

    # ---- recipe ------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        spec = {"weight": self.cfg.weight_spec(None), "act": self.cfg.act_spec()}
        if self.cfg.quantize_first_last:
            model = quantize_model(model, self._all_layer_rules(model, spec), inplace=True).model
        else:
            model = quantize_model(model, inplace=True, **spec).model
        for name, layer in model.named_modules():
            if isinstance(layer, QuantConv2d | QuantLinear):
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
                q.quantize = True
        return model

    def hooks(self) -> list[Hook]:
        return [self]

    def epochs(self) -> int:
        return self.cfg.reshape_epochs + self.cfg.quant_epochs

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
        if not isinstance(layer.weight_quant, ScaleClip):
            return
        channels = layer.weight.shape[0]
        size = resolve_group_size(self.cfg.group_size, channels)
        self.group_sizes[name] = size
        if self.cfg.group_size and channels % self.cfg.group_size:
            self.fallbacks[name] = size
        spec = self.cfg.weight_spec(size)
        quantizer = ScaleClip(**{k: v for k, v in spec.items() if k != "name"})
        if self.cfg.learnable:  # materialise log T from the (possibly pretrained) weight now
            quantizer.initialize_parameters(layer.weight.detach())
        layer.weight_quant = quantizer

    # ---- hooks -------------------------------------------------------------------------
    def stage_at(self, epoch: int) -> int:
        """The stage epoch `epoch` (0-based) trains in."""
        return RESHAPE if epoch < self.cfg.reshape_epochs else QUANTIZE

    def _set_stage(self, stage: int) -> None:
        self.stage = stage
        for q in self.quantizers:
            q.quantize = stage == QUANTIZE

    def on_fit_start(self, trainer: Trainer) -> None:
        self._set_stage(self.stage_at(trainer.epoch))

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        stage = self.stage_at(epoch)
        if stage != self.stage:
            log.info("gdrq: epoch %d starts stage %d (%s)", epoch, stage,
                     "reshaping, clip only" if stage == RESHAPE else "quantization-aware")
        self._set_stage(stage)
        if epoch in (0, self.cfg.reshape_epochs):  # first epoch of a stage
            self._recalibrate(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._set_stage(QUANTIZE)  # the final evaluation and checkpoint are quantized
        if trainer.epoch <= self.cfg.reshape_epochs:  # no quantized epoch trained: calibrate
            self._recalibrate(trainer)

    def _recalibrate(self, trainer: Trainer) -> None:
        """BN statistics and activation EMAs re-estimated with the current stage's forward."""
        if self.cfg.bn_recalibration_batches:
            trainer.recalibrate_bn(self.cfg.bn_recalibration_batches)

    def phase(self, epoch: int, total: int) -> tuple[float, int] | None:
        r = self.cfg.reshape_epochs
        if epoch < r:
            return float(epoch), r
        return float(epoch - r), max(self.cfg.quant_epochs, 1)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {"stage": self.stage, "group_sizes": dict(self.group_sizes),
                    "fallbacks": dict(self.fallbacks)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._set_stage(int(meta["stage"]))


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


@register_recipe("gdrq", GDRQConfig)
def build_gdrq(cfg: GDRQConfig) -> Recipe:
    return GDRQRecipe(cfg)
