"""One place that loads and writes model files, by format.

A format is registered once (`register_format`) with its tag (the `format` field of a lowbit
safetensors header), its file suffixes, a loader `path -> (model, meta)` and optionally a
writer `(model, meta, path) -> path`. `load_model(path)` finds the format from the file's
header (or, for files that are not lowbit safetensors, from the suffix) and calls its loader;
`save_model(model, meta, path, fmt)` calls a writer; `export_file(src, dst, fmt)` does both.
Registered here: run checkpoints, packed `.lowbit` files (writer "packed-entropy": the same
format with entropy-coded weight codes) and folded files. `meta` always holds
the run info of `RUN_KEYS` (config, model, dataset, num_classes, in_channels), validated on load.

Every loader rebuilds the model from the stored config (`model_from_config`: the float model,
prepared by its recipe) and fills it after checking the file's integrity digest, its header's
types, and every tensor's shape, dtype and values.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lowbit.build import build_model, load_run
from lowbit.engine import checkpoint as ckpt
from lowbit.errors import CheckpointError, LowbitError
from lowbit.export import folded, packed

Loader = Callable[[Path], tuple[nn.Module, dict[str, Any]]]
Writer = Callable[[nn.Module, dict[str, Any], Path], Path]


@dataclass(frozen=True)
class ModelFormat:
    """A model file format: `name` (CLI word), header `tag`, `suffixes`, loader and writer."""

    name: str
    tag: str | None
    suffixes: tuple[str, ...]
    load: Loader
    write: Writer | None = None
    meta: Callable[[Path], dict[str, Any]] | None = None  # the run info, without the model


FORMATS: dict[str, ModelFormat] = {}


def register_format(fmt: ModelFormat) -> ModelFormat:
    """Add a model file format; names are unique."""
    if fmt.name in FORMATS:
        raise ValueError(f"model file format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


def model_from_config(config: dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    """The (untrained) model a saved config describes, with its method's layers in place.

    A model named by `module:callable` in a file's config is not imported from it (untrusted).
    """
    return build_model(load_run(base=config), num_classes, in_channels, init=False,
                       trusted=False)


def _model_for(meta: dict[str, Any], path: Path, what: str) -> nn.Module:
    ckpt.check_run_meta(meta, path, what)
    try:
        return model_from_config(meta["config"], meta["num_classes"], meta["in_channels"])
    except (LowbitError, TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{what} {path}: its stored config does not build a model "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                              ) from exc


def _load_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    tensors, meta = ckpt.load_checkpoint(path)
    model = _model_for(meta, path, "checkpoint")
    ckpt.load_model_state(model, ckpt.split_prefix(tensors, "model"), path)
    return model.eval(), meta


def _packed_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors, _ = ckpt.read_lowbit_file(path, "packed model")
    return tensors, packed.read_header(tensors, path)


def _load_packed(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    tensors, header = _packed_file(path)
    model = _model_for(header, path, "packed model")
    return packed.restore_packed(model, tensors, header, path), header


def _folded_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors, header = ckpt.read_lowbit_file(path, "folded model")
    assert header is not None  # format_of found its tag
    return tensors, header


def _load_folded(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    tensors, header = _folded_file(path)
    model = _model_for(header, path, "folded model")
    return folded.restore_folded(model, tensors, header, path), header


register_format(ModelFormat("checkpoint", ckpt.FORMAT, (".safetensors",), _load_checkpoint,
                            meta=lambda path: ckpt.load_checkpoint(path)[1]))
register_format(ModelFormat("packed", packed.FORMAT, (".lowbit",), _load_packed,
                            packed.write_packed, lambda path: _packed_file(path)[1]))
register_format(ModelFormat("packed-entropy", None, (), _load_packed,
                            partial(packed.write_packed, entropy=True)))  # loads as "packed"
register_format(ModelFormat("folded", folded.FORMAT, (".folded.safetensors",), _load_folded,
                            folded.write_folded, lambda path: _folded_file(path)[1]))


def _load_onnx(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """An ONNX file run by onnxruntime (the optional extra lowbit[onnx], imported on use)."""
    try:
        from lowbit.export.onnx import load_onnx
    except ImportError as exc:
        raise LowbitError(f"{path} is an ONNX model: evaluating it needs the optional extra "
                          f'(pip install "lowbit[onnx]"): {exc}') from None
    return load_onnx(path)


register_format(ModelFormat("onnx", None, (".onnx",), _load_onnx))


def header_tag(path: str | Path) -> str | None:
    """The lowbit format tag in a safetensors file's header, without reading the tensors."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(min(size, 1 << 24)))
        tag = json.loads(header["__metadata__"][ckpt.META_KEY]).get("format")
        return tag if isinstance(tag, str) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # the format's loader gives the precise error


def format_of(path: str | Path) -> ModelFormat:
    """The registered format of a model file: by its header's tag, else by its suffix."""
    tag = header_tag(path)
    for fmt in FORMATS.values():
        if tag is not None and fmt.tag == tag:
            return fmt
    if tag is not None and tag.split("/")[0] in {f.tag.split("/")[0] for f in FORMATS.values()
                                                 if f.tag}:
        raise CheckpointError(f"{path} has format {tag}, which this lowbit cannot read; export "
                              "it again from its checkpoint with this version")
    if tag is None:
        for fmt in FORMATS.values():
            if fmt.tag is None and str(path).endswith(fmt.suffixes):
                return fmt
        _refuse_pickles(Path(path))
    return FORMATS["checkpoint"]  # its loader names what is wrong with the file


TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive, or a raw pickle


def _refuse_pickles(path: Path) -> None:
    """A torch.save file is refused with what to do instead: lowbit never unpickles a file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return  # the checkpoint loader names the problem
    if head.startswith(TORCH_SAVE_MAGIC):
        raise CheckpointError(
            f"{path} is a PyTorch file (torch.save), not a lowbit model file, and lowbit never "
            "unpickles files; load it yourself into your model (model.load_state_dict("
            "torch.load(path, weights_only=True))), then write a lowbit checkpoint with "
            "lowbit.api.fit(model, your_data, config={'train': {'epochs': 0}})")


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in any registered model file: (model in eval mode, meta)."""
    return format_of(path).load(Path(path))


def model_meta(path: str | Path) -> dict[str, Any]:
    """The run info a lowbit model file records (its config, model, dataset, ...), read without
    building the model: for a run checkpoint, a packed or a folded file."""
    fmt = format_of(path)
    if fmt.meta is None:
        raise CheckpointError(f"{path} is a {fmt.name} file, which records no lowbit run info")
    return fmt.meta(Path(path))


def load_packed(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a packed `.lowbit` file: (model in eval mode, header)."""
    fmt = format_of(path)
    if fmt.name != "packed":
        raise CheckpointError(f"{path} is not a lowbit packed model; export one with lowbit export")
    return fmt.load(Path(path))


def save_model(model: nn.Module, meta: dict[str, Any], path: str | Path, fmt: str) -> Path:
    """Write `model` (with the run info `meta`) to `path` in the registered format `fmt`."""
    entry = FORMATS.get(fmt)
    if entry is None or entry.write is None:
        choices = ", ".join(sorted(k for k, f in FORMATS.items() if f.write))
        raise LowbitError(f"cannot write model format {fmt!r}; choose one of {choices}")
    ckpt.check_run_meta(meta, path, "model info for")
    # the canonical config: a file exported from an old-shape checkpoint needs no migration
    config = load_run(base=meta["config"]).cfg.to_dict()
    return entry.write(model, {**meta, "config": config}, Path(path))


def export_file(source: str | Path, path: str | Path, fmt: str = "packed") -> Path:
    """Load any model file and write it to `path` in format `fmt` (e.g. a checkpoint, packed)."""
    model, meta = load_model(source)
    return save_model(model, meta, path, fmt)
