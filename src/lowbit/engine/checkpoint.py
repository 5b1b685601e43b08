"""Checkpoints: tensors in safetensors, metadata as JSON inside the same file, written atomically.

One file holds everything a run needs: `model/…` tensors, optional `optim/…` and `method/…`
tensors, the torch RNG state, and a JSON header (`__lowbit__`) with the resolved config, epoch,
step, metrics and the non-tensor parts of the optimizer and method state. Loading never
unpickles anything. Writes go to a temp file in the same folder, are fsynced, then renamed, so a
crash at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lowbit.errors import CheckpointError

FORMAT = "lowbit-checkpoint/1"
META_KEY = "__lowbit__"


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` via a fsynced temp file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Save named tensors plus JSON-able `meta` to `path` atomically."""
    path = Path(path)
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {META_KEY: json.dumps({"format": FORMAT, **meta}, sort_keys=True)}
    atomic_write_bytes(path, st_save(clean, metadata=header))
    return path


def read_lowbit_file(
    path: str | os.PathLike[str], what: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(tensors, lowbit metadata or None) of a safetensors file; never unpickles anything.

    Missing, truncated or non-safetensors files raise a one-line `CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} not found")
    payload = path.read_bytes()
    try:
        tensors = st_load(payload)
        header_len = int.from_bytes(payload[:8], "little")
        header = json.loads(payload[8 : 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get(META_KEY, "null"))
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise CheckpointError(
            f"{what} {path} is truncated or not a safetensors file ({exc}); use an intact copy "
            f"(runs keep last.safetensors and final.safetensors)"
        ) from exc
    return tensors, meta if isinstance(meta, dict) else None


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load (tensors, meta). Missing, truncated or foreign files raise `CheckpointError`."""
    tensors, meta = read_lowbit_file(path)
    if meta is None or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a lowbit checkpoint (no {META_KEY} metadata)"
        )
    return tensors, meta


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix/`, with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def with_prefix(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors and JSON-able metadata."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}/{key}"] = value
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = flat.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Any) -> None:
    """`load_state_dict(strict=True)` with a one-line error naming what does not match."""
    missing, unexpected = (
        model.state_dict().keys() - state.keys(),
        state.keys() - model.state_dict().keys(),
    )
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the model: missing "
            f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    for key, ref in model.state_dict().items():
        if ref.shape != state[key].shape:
            raise CheckpointError(
                f"checkpoint {path}: {key} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(ref.shape)}"
            )
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise CheckpointError(f"checkpoint {path}: {key} holds NaN or inf values")
    model.load_state_dict(state)
