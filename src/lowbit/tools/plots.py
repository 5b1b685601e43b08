"""Histograms of weights (and layer inputs) with their quantization levels marked.

matplotlib is an optional extra.
`distribution_histograms` (GDRQ, `lowbit inspect --hist`): weights and inputs before and after
Scale-Clip and quantized, with clip thresholds and levels marked.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lowbit.errors import LowbitError
from lowbit.nn.layers import QuantLayer
from lowbit.quant.base import Quantizer
from lowbit.quant.functional import channel_view


def pyplot() -> Any:  # matplotlib is optional: no type to name here
    """matplotlib.pyplot on the Agg back end, or a one-line error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LowbitError("plots need matplotlib: pip install 'lowbit[plot]'") from exc
    return plt


def distribution_histograms(model: nn.Module, batch: Tensor | None, out_dir: Path,
                            bins: int = 120) -> list[Path]:
    """GDRQ's view of each quantized layer: one PNG with a row for its weight and one for its
    input, each as float (clip thresholds marked), after clipping, and quantized (levels marked).

    Works for every quantizer; the clip column shows the input unchanged when the quantizer has
    no clip threshold. Runs on a deep copy in eval mode (frozen EMA clips) with every Scale-Clip
    quantizing, so a checkpoint from the reshaping stage still shows its levels.

    Args:
        model: a model with QuantConv2d / QuantLinear layers.
        batch: model inputs for the activation rows (captured with forward pre-hooks, so they are
            each layer's input before its act_quant), or None for weights only.
        out_dir: where the PNGs go (created).
        bins: histogram bins.

    Returns:
        The written paths, one per quantized layer.
    """
    plt = pyplot()
    model = copy.deepcopy(model).eval()
    for q in model.modules():
        if isinstance(q, Quantizer) and not q.enabled:
            q.set_enabled(True)  # draw the quantized form of a clip-only (reshaping) stage
    inputs = _layer_inputs(model, batch) if batch is not None else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, layer in model.named_modules():
        if not isinstance(layer, QuantLayer):
            continue
        rows = [(what, q, x) for what, q, x in (
            ("weight", layer.weight_quant, layer.weight.detach()),
            ("input", layer.act_quant, inputs.get(name))) if q is not None and x is not None]
        if not rows:
            continue
        fig, axes = plt.subplots(len(rows), 3, figsize=(12, 3 * len(rows)), squeeze=False)
        for ax_row, (what, q, x) in zip(axes, rows, strict=True):
            _distribution_row(ax_row, f"{name} {what}", q, x.float(), bins)
        path = out_dir / f"{name or 'model'}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


@torch.no_grad()
def _layer_inputs(model: nn.Module, batch: Tensor) -> dict[str, Tensor]:
    """Each act-quantized layer's input on `batch` (the last call's, for reused layers)."""
    seen: dict[str, Tensor] = {}
    handles = []
    for name, layer in model.named_modules():
        if isinstance(layer, QuantLayer) and layer.act_quant is not None:
            def grab(_m: nn.Module, args: tuple[Tensor, ...], name: str = name) -> None:
                seen[name] = args[0].detach().clone()  # clone: later in-place ops (ReLU)
            handles.append(layer.register_forward_pre_hook(grab))
    try:
        model(batch)
    finally:
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def _distribution_row(axes: Any, title: str, q: Quantizer, x: Tensor, bins: int) -> None:
    """Three panels: float with ±T marked, clipped, quantized with its levels marked."""
    threshold = getattr(q, "threshold", None)  # clip-based quantizers (scaleclip, uniform)
    t = threshold(x, update=False).float() if callable(threshold) else None
    signed, clipped = bool(getattr(q, "signed", True)), x
    if t is not None:
        tv = channel_view(t, x)
        clipped = torch.minimum(torch.maximum(x, -tv if signed else 0 * tv), tv)
    quantized = q(x).detach().float()
    table = q.levels(x).detach().float()  # (C, L) for per-channel / per-group quantizers
    levels = table.reshape(-1).unique()
    where = " over all groups" if table.dim() == 2 else ""
    panels = [(x, "float (before clip)"), (clipped, "clipped" if t is not None else "no clip"),
              (quantized, f"quantized {q.name} {q.bits}-bit, {len(levels)} levels{where}")]
    for ax, (values, label) in zip(axes, panels, strict=True):
        ax.hist(_sample(values).numpy(), bins=bins, color="tab:blue", alpha=0.8)
        ax.set_title(f"{title}: {label}", fontsize=8)
        ax.set_yscale("log")
    if t is not None:  # per-group thresholds: a line per distinct value (capped)
        for v in t.reshape(-1).unique()[:16].tolist():
            for side in (v, -v) if signed else (v,):
                axes[0].axvline(side, color="tab:red", lw=0.6, ls="--")
    for level in levels[:64].tolist():
        for ax in axes[1:]:
            ax.axvline(level, color="k", lw=0.5, ls=":")


def _sample(x: Tensor, limit: int = 200_000) -> Tensor:
    """At most `limit` values of `x` (a fixed random subset): big activations plot fast."""
    flat = x.reshape(-1)
    if flat.numel() <= limit:
        return flat
    gen = torch.Generator().manual_seed(0)
    return flat[torch.randperm(flat.numel(), generator=gen)[:limit]]
