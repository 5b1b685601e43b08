"""The folded artifact (`lowbit export CHECKPOINT --fold-bn`): a model after `fold_bn`, on disk.

`export_folded(checkpoint, path)` folds every quantized conv + BN pair of a checkpoint's model
(see `lowbit.export.fold`) and writes one safetensors file: the folded model's state (integer
weight codes, per-channel multipliers and offsets, frozen activation clips, the layers left as
they were) plus a header with the run config and the folded layout. `load_folded(path)` rebuilds
it for evaluation: the run's model is prepared by its recipe (as for a checkpoint), each folded
pair is replaced by an empty `FoldedConvBN` and an `nn.Identity`, and the state is loaded
strictly. No pickle is involved. Codes are stored one per byte, not bit-packed: the packed
`.lowbit` artifact (`export_packed`) is the one that measures size on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save as st_save
from torch import nn

from lowbit.engine.checkpoint import META_KEY, atomic_write_bytes, read_lowbit_file
from lowbit.errors import CheckpointError
from lowbit.export.fold import FoldedConvBN, fold_with_layout

FORMAT = "lowbit-folded/1"
_RUN_KEYS = ("config", "model", "dataset", "num_classes", "in_channels")


def export_folded(checkpoint: str | Path, path: str | Path) -> Path:
    """Fold the model of a lowbit checkpoint and write it to `path` (atomically).

    Raises:
        LowbitError: the model has nothing to fold or a layer that cannot fold (see `fold_bn`).
    """
    from lowbit.api import load_model

    model, meta = load_model(checkpoint)
    folded, layout = fold_with_layout(model, inplace=True)
    header = {"format": FORMAT, **{k: meta[k] for k in _RUN_KEYS}, "folded": layout}
    tensors = {k: v.detach().contiguous().clone() for k, v in folded.state_dict().items()}
    path = Path(path)
    atomic_write_bytes(path, st_save(tensors, metadata={META_KEY: json.dumps(header)}))
    return path


def load_folded(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a folded model written by `export_folded`: (model in eval mode, header)."""
    from lowbit.api import build_quant_model

    tensors, header = read_lowbit_file(path, "folded model")
    if header is None or header.get("format") != FORMAT:
        found = None if header is None else header.get("format")
        raise CheckpointError(f"{path} is not a lowbit folded model (format {found})")
    model = build_quant_model(header["config"], header["num_classes"], header["in_channels"])
    for conv_name, entry in header["folded"].items():
        model.set_submodule(conv_name, FoldedConvBN(**entry["config"]))
        model.set_submodule(entry["bn"], nn.Identity())
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match its model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.eval(), header
