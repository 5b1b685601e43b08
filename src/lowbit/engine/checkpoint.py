"""Checkpoints: tensors in safetensors, metadata as JSON inside the same file, written atomically.

One file holds everything a run needs: `model/…` tensors, optional `optim/…` and `method/…`
tensors, the torch RNG state, and a JSON header (`__lowbit__`) with the resolved config, epoch,
step, metrics and the non-tensor parts of the optimizer and method state. Loading never
unpickles anything. Writes go to a temp file in the same folder, are fsynced, then renamed, so a
crash at any moment leaves either the old file or the new one, never half of one; the file gets
the usual permissions (0666 minus the umask), so it can be shared.

Integrity: every lowbit file (checkpoint, packed, folded) stores `__lowbit_sha256__`, the SHA-256
of its JSON header and of every tensor (name, dtype, shape, bytes), checked on every read: a
flipped bit, an edited header or a missing tensor is a one-line `CheckpointError`. Files written
before the check existed have no digest and load as before (logged at debug level).
"""

from __future__ import annotations

import hashlib
import json
import logging
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
SUM_KEY = "__lowbit_sha256__"

# What every model file's header carries to rebuild and evaluate its model, with JSON types.
RUN_KEYS = {"config": dict, "model": str, "dataset": str, "num_classes": int, "in_channels": int}

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` via a fsynced temp file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a shared artifact must not be
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
    return write_lowbit_file(path, tensors, json.dumps({"format": FORMAT, **meta}, sort_keys=True))


def digest(tensors: dict[str, torch.Tensor], header: str) -> str:
    """SHA-256 (hex) of a JSON header string and of every tensor's name, dtype, shape and bytes."""
    sha = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        sha.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def write_lowbit_file(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], header: str
) -> Path:
    """Write tensors and a JSON header string (plus their digest) as safetensors, atomically."""
    path = Path(path)
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    metadata = {META_KEY: header, SUM_KEY: digest(clean, header)}
    atomic_write_bytes(path, st_save(clean, metadata=metadata))
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
        metadata = json.loads(payload[8 : 8 + header_len]).get("__metadata__") or {}
        text = metadata.get(META_KEY)
        meta = None if text is None else json.loads(text)
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise CheckpointError(
            f"{what} {path} is truncated or not a safetensors file ({exc}); use an intact copy "
            f"(runs keep last.safetensors and final.safetensors)"
        ) from exc
    if text is not None:
        _verify(path, what, tensors, text, metadata.get(SUM_KEY))
        if not isinstance(meta, dict):
            raise CheckpointError(f"{what} {path}: its {META_KEY} header is a JSON "
                                  f"{type(meta).__name__}, not an object; use an intact copy")
    return tensors, meta


def _verify(path: Path, what: str, tensors: dict[str, torch.Tensor], text: str,
            stored: str | None) -> None:
    """Check the stored digest; a file without one predates the check and is let through."""
    if stored is None:
        log.debug("%s %s has no integrity digest (written before lowbit stored one); "
                  "loading it unchecked", what, path)
        return
    if digest(tensors, text) != stored:
        raise CheckpointError(
            f"{what} {path} fails its integrity check (the SHA-256 of its tensors and header "
            f"differs from the stored one): the file was modified or corrupted; use an intact copy"
        )


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load (tensors, meta). Missing, truncated or foreign files raise `CheckpointError`."""
    tensors, meta = read_lowbit_file(path)
    if meta is None or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a lowbit checkpoint (no {META_KEY} metadata)"
        )
    return tensors, meta


def check_run_meta(meta: dict[str, Any], path: Any, what: str = "checkpoint") -> None:
    """One-line `CheckpointError` unless `meta` holds every `RUN_KEYS` entry with its JSON type."""
    for key, kind in RUN_KEYS.items():
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            found = "missing" if value is None else f"a JSON {type(value).__name__}"
            raise CheckpointError(f"{what} {path}: its header's {key!r} is {found}, expected a "
                                  f"{kind.__name__}; the file is damaged or was not written by "
                                  "lowbit")
        if isinstance(value, int) and value <= 0:
            raise CheckpointError(f"{what} {path}: its header's {key!r} is {value}, expected > 0")


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
    """`load_state_dict(strict=True)` after checking keys, shapes, dtypes and values.

    Any mismatch, a NaN/inf value or a negative BatchNorm variance is a one-line `CheckpointError`
    naming the file and the tensor.
    """
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
        check_tensor(key, state[key], ref, path)
    model.load_state_dict(state)


def check_tensor(key: str, value: torch.Tensor, ref: torch.Tensor, path: Any) -> None:
    """One stored tensor against the model's: same shape and dtype, finite, variances >= 0."""
    if ref.shape != value.shape:
        raise CheckpointError(
            f"checkpoint {path}: {key} has shape {tuple(value.shape)}, "
            f"the model expects {tuple(ref.shape)}"
        )
    if ref.dtype != value.dtype:
        raise CheckpointError(
            f"checkpoint {path}: {key} has dtype {value.dtype}, the model expects {ref.dtype}"
        )
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise CheckpointError(f"checkpoint {path}: {key} holds NaN or inf values")
    if key.endswith("running_var") and bool((value < 0).any()):
        raise CheckpointError(f"checkpoint {path}: {key} holds a negative BatchNorm variance")
