"""The deployable artifact: quantized weights bit-packed to their declared bits, in one file.

`export_packed(checkpoint, path)` writes a safetensors file (`.lowbit`) holding, for every layer
whose weight quantizer has a finite codebook, the integer codes packed at ceil(log2(#codes)) bits
per weight (= the quantizer's `bits`) plus its scale(s); every other tensor (biases, BN, float
layers, activation-quantizer state) is stored as is. The file's size on disk is the model's real
storage cost. `load_packed(path)` rebuilds the model with the decoded weights baked in (weight
quantizers removed, activation quantizers kept), so its outputs equal the quantized model's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn

from lowbit.engine.checkpoint import META_KEY, atomic_write_bytes, read_lowbit_file
from lowbit.errors import CheckpointError
from lowbit.export.bitpack import pack_bits, unpack_bits
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quant.base import Quantizer

FORMAT = "lowbit-packed/1"


def _packable(layer: nn.Module) -> bool:
    q = getattr(layer, "weight_quant", None)
    return isinstance(layer, QuantConv2d | QuantLinear) and hasattr(q, "code_range")


def pack_model(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, layer metadata) for a quantized model; see the module docstring."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    for name, layer in model.named_modules():
        if not _packable(layer) or f"{name}.weight" not in state:
            continue
        q = layer.weight_quant
        codes, scale = q.encode(layer.weight.detach())
        code_range = q.code_range()
        lo, n_codes = int(code_range.min()), len(code_range)
        bits = max(1, math.ceil(math.log2(n_codes)))
        tensors[f"{name}.weight.codes"] = pack_bits(codes.to(torch.int64) - lo, bits)
        tensors[f"{name}.weight.scale"] = scale.detach().float().reshape(-1)
        layers[name] = {
            "shape": list(layer.weight.shape),
            "bits": bits,
            "offset": lo,
            "scale_shape": list(scale.shape),
            "quantizer": q.to_config(),
        }
        # Weight-quantizer state (INQ masks, EMA clips of weights) is training-only: the packed
        # codes and scales replace it, and `load_packed` drops the weight quantizer anyway.
        for key in [
            k for k in state if k == f"{name}.weight" or k.startswith(f"{name}.weight_quant.")
        ]:
            del state[key]
    tensors.update(state)
    return tensors, layers


def export_packed(checkpoint: str | Path, path: str | Path) -> Path:
    """Write the packed artifact of a lowbit checkpoint to `path` (atomically)."""
    from lowbit.api import load_model

    model, meta = load_model(checkpoint)
    tensors, layers = pack_model(model)
    header = {
        "format": FORMAT,
        "config": meta["config"],
        "model": meta["model"],
        "dataset": meta["dataset"],
        "num_classes": meta["num_classes"],
        "in_channels": meta["in_channels"],
        "layers": layers,
    }
    clean = {k: v.contiguous().clone() for k, v in tensors.items()}
    path = Path(path)
    atomic_write_bytes(path, st_save(clean, metadata={META_KEY: json.dumps(header)}))
    return path


def read_packed(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, header) of a packed file, with clear errors for anything else."""
    tensors, header = read_lowbit_file(path, "packed model")
    if header is None or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lowbit packed model; export one with lowbit export")
    return tensors, header


def load_packed(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the deployable model from a packed file: (model in eval mode, header)."""
    from lowbit.api import build_quant_model
    from lowbit.transform import dequantize_model

    tensors, header = read_packed(path)
    model = build_quant_model(header["config"], header["num_classes"], header["in_channels"])
    state = dict(tensors)
    for name, info in header["layers"].items():
        q: Quantizer = model.get_submodule(name).weight_quant  # type: ignore[assignment]
        count = math.prod(info["shape"])
        codes = unpack_bits(state.pop(f"{name}.weight.codes"), info["bits"], count)
        scale = state.pop(f"{name}.weight.scale").reshape(info["scale_shape"])
        state[f"{name}.weight"] = q.decode((codes + info["offset"]).view(info["shape"]), scale)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(".weight_quant." not in k for k in missing):
        raise CheckpointError(
            f"{path} does not match its model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model = dequantize_model(model, keep_act=True)
    return model.eval(), header
