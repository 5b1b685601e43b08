"""The folded artifact (`lowbit export CHECKPOINT --fold-bn`): a model after `fold_bn`, on disk.

`write_folded(model, meta, path)` folds every quantized conv + BN pair of a model (see
`lowbit.export.fold`) and writes one safetensors file: the folded model's state (integer weight
codes, per-channel multipliers and offsets, frozen activation clips, the layers left as they
were) plus a header with the run info and the folded layout. `restore_folded(model, tensors,
header, path)` fills the model its config rebuilds (as for a checkpoint): each folded pair is
replaced by an empty `FoldedConvBN` and an `nn.Identity`, and the state is loaded after the
same checks as a checkpoint's. No pickle is involved. Codes are stored one per byte, not
bit-packed: the packed `.lowbit` artifact is the one that measures size on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from lowbit.engine.checkpoint import RUN_KEYS, load_model_state, write_lowbit_file
from lowbit.errors import CheckpointError
from lowbit.export.fold import FoldedConvBN, fold_with_layout

FORMAT = "lowbit-folded/1"


def write_folded(model: nn.Module, meta: dict[str, Any], path: str | Path) -> Path:
    """Fold a copy of `model` and write it to `path` (atomically); `meta` holds `RUN_KEYS`.

    Raises:
        LowbitError: the model has nothing to fold or a layer that cannot fold (see `fold_bn`).
    """
    folded, layout = fold_with_layout(model)
    header = {"format": FORMAT, **{k: meta[k] for k in RUN_KEYS}, "folded": layout}
    return write_lowbit_file(path, folded.state_dict(), json.dumps(header))


def restore_folded(model: nn.Module, tensors: dict[str, Any], header: dict[str, Any],
                   path: Any) -> nn.Module:
    """Fill `model` (built from the header's config) with a folded file's state; eval mode."""
    layout = header.get("folded")
    if not isinstance(layout, dict):
        raise CheckpointError(f"folded model {path}: its header has no 'folded' layout object")
    for conv_name, entry in layout.items():
        try:
            model.get_submodule(conv_name)
            model.set_submodule(conv_name, FoldedConvBN(**entry["config"]))
            model.get_submodule(entry["bn"])
            model.set_submodule(entry["bn"], nn.Identity())
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"folded model {path}: bad layout entry for {conv_name!r} "
                                  f"({exc})") from exc
    load_model_state(model, tensors, path)
    return model.eval()
