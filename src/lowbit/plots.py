"""Histograms of weights with their quantization levels marked (matplotlib, optional extra)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from lowbit.errors import LowbitError
from lowbit.nn.layers import QuantConv2d, QuantLinear


def _pyplot():  # noqa: ANN202 - matplotlib is optional
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LowbitError("plots need matplotlib: pip install 'lowbit[plot]'") from exc
    return plt


def weight_histograms(model: nn.Module, out_dir: Path, bins: int = 120) -> list[Path]:
    """One PNG per quantized layer: latent float weights, quantized weights, levels as lines."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, layer in model.named_modules():
        if not isinstance(layer, QuantConv2d | QuantLinear) or layer.weight_quant is None:
            continue
        w = layer.weight.detach().float()
        q = layer.quantized_weight().float()
        levels = layer.weight_quant.levels(w).reshape(-1).unique()
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.hist(w.flatten().numpy(), bins=bins, alpha=0.6, label="float (latent)")
        ax.hist(q.flatten().numpy(), bins=bins, alpha=0.6, label="quantized")
        for level in levels[:64].tolist():
            ax.axvline(level, color="k", lw=0.6, ls=":")
        ax.set_title(
            f"{name}: {layer.weight_quant.name} {layer.weight_quant.bits}-bit, {len(levels)} levels"
        )
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        path = out_dir / f"{name or 'model'}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
