"""The deployable artifact: quantized weights bit-packed to their declared bits, in one file.

`write_packed(model, meta, path)` writes a safetensors file (`.lowbit`) holding, for every layer
whose weight quantizer has a finite codebook, the integer codes packed at ceil(log2(#codes)) bits
per weight (the quantizer's `bits`) plus its scale(s); every other tensor of the model's state
(biases, BN, float layers, activation-quantizer state) is stored as is. The file's size on disk
is the model's real storage cost: the tensors are concatenated into a few flat blobs (`codes`:
every layer's codes, byte-aligned per layer; `values.<dtype>`: scales then state tensors, in the
model's `state_dict` order), so the safetensors header lists five tensors, not hundreds; the
names and shapes come back from the model the stored config rebuilds, and a digest of them
(`state_digest`) refuses a file whose model does not match. The JSON header (run config, model,
dataset, one `[name, bits, scale shape]` entry per packed layer) is stored
zlib-compressed; of the run config it keeps what rebuilds and evaluates the model
(`DEPLOY_SECTIONS`: model, quantization, dataset), not how it was trained (optimizer, schedule,
training loop: they stay in the checkpoint and the result files, and cost a header 1.5 times as
large), in the uint8 tensor `header`; the safetensors metadata keeps the format tag and
the integrity digest (see `lowbit.engine.checkpoint`). A weight's codes are stored as
their indices in its quantizer's `code_range()` (binary's {-1, +1} packs at 1 bit). Optionally
(`entropy=True`, header `codec: "lzma"`) the indices are entropy-coded instead: one LZMA2
stream over one byte per index, smaller than the fixed bits for skewed codebooks.

`restore_packed(model, tensors, header, path)` fills a freshly built model: each packed layer's
weight quantizer becomes a `Decoded` holding its codes and scale, so the loaded model computes
exactly what the exported one did, for every method (see `lowbit.export.frozen`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.engine.checkpoint import RUN_KEYS, check_tensor, write_lowbit_file
from lowbit.errors import CheckpointError, LowbitError
from lowbit.export.bitpack import entropy_decode, entropy_encode, pack_bits, unpack_bits
from lowbit.export.frozen import Decoded
from lowbit.nn.layers import QuantLayer
from lowbit.quant.base import Quantizer

FORMAT = "lowbit-packed/2"
log = logging.getLogger(__name__)
DEPLOY_SECTIONS = ("model", "quant", "data")  # of the run config, kept in a packed file


def _packable(layer: nn.Module) -> bool:
    return (isinstance(layer, QuantLayer) and layer.weight_quant is not None
            and layer.weight_quant.has_codebook)


def _state_items(model: nn.Module, packed: list[str]) -> list[tuple[str, torch.Tensor]]:
    """The model's state in `state_dict` order, minus what the packed codes replace."""
    drop = tuple(f"{name}.weight_quant." for name in packed)
    weights = {f"{name}.weight" for name in packed}
    return [(k, v.detach()) for k, v in model.state_dict().items()
            if k not in weights and not k.startswith(drop)]


def state_digest(items: list[tuple[str, torch.Tensor]]) -> str:
    """Short digest of the stored state's names, dtypes and shapes (the model's layout)."""
    text = "\n".join(f"{k}:{str(v.dtype)[6:]}:{list(v.shape)}" for k, v in items)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _encode(name: str, q: Quantizer, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with torch.no_grad():
            return q.encode(weight.detach())
    except ValueError as exc:
        raise LowbitError(f"cannot pack layer {name}: {exc}") from exc


def pack_model(model: nn.Module, entropy: bool = False
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, layout header) of a quantized model; see the module docstring.

    `entropy`: store the codes entropy-coded (`codec` "lzma": one LZMA2 stream over one byte
    per code index, all layers) instead of at their fixed bits, where that is smaller (codes
    near their full entropy, e.g. binary ones, code to slightly more than their bits).
    """
    blobs: dict[str, list[torch.Tensor]] = {"codes": []}
    layers: list[list[Any]] = []
    indices: list[torch.Tensor] = []
    for name, layer in model.named_modules():
        if not _packable(layer):
            continue
        q: Any = layer.weight_quant
        codes, scale = _encode(name, q, layer.weight)
        table = q.code_range().to(torch.int64)
        idx = _indices(name, codes, table).to(torch.uint8)
        blobs["codes"].append(pack_bits(idx, _bits(table)))
        if entropy:  # kept only to entropy-code them below
            indices.append(idx)
        _append(blobs, scale.detach().to(layer.weight.dtype))
        layers.append([name, _bits(table), list(scale.shape)])
    items = _state_items(model, [entry[0] for entry in layers])
    for _, value in items:
        _append(blobs, value)
    tensors = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.uint8)
               for k, v in blobs.items()}
    layout: dict[str, Any] = {"layers": layers, "state_digest": state_digest(items)}
    if entropy and indices:
        coded = entropy_encode(torch.cat(indices))
        if coded.numel() < tensors["codes"].numel():
            tensors["codes"], layout["codec"] = coded, "lzma"
        else:
            log.info("entropy coding would not make the codes smaller (%d vs %d bytes at their "
                     "fixed bits): stored at their fixed bits", coded.numel(),
                     tensors["codes"].numel())
    return tensors, layout


def _bits(table: torch.Tensor) -> int:
    return max(1, math.ceil(math.log2(len(table))))


def _indices(name: str, codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Each code's index in the ascending code table (refusing codes not in it)."""
    flat = codes.reshape(-1).to(torch.int64)
    idx = torch.searchsorted(table, flat).clamp_(max=len(table) - 1)
    if not torch.equal(table[idx], flat):
        raise LowbitError(f"cannot pack layer {name}: its codes are not in its quantizer's "
                          "code_range()")
    return idx


def _append(blobs: dict[str, list[torch.Tensor]], value: torch.Tensor) -> None:
    blobs.setdefault(f"values.{str(value.dtype)[6:]}", []).append(value.reshape(-1))


def write_packed(model: nn.Module, meta: dict[str, Any], path: str | Path,
                 entropy: bool = False) -> Path:
    """Write the packed artifact of a quantized `model` to `path` (atomically).

    Args:
        model: the deployable model (`recipe.convert(model)`, or any loaded lowbit model).
        meta: the run info of `RUN_KEYS` (config, model, dataset, num_classes, in_channels).
        entropy: entropy-code the weight codes (smaller for skewed codebooks; see `pack_model`).
    """
    tensors, layout = pack_model(model, entropy)
    header = {**{k: meta[k] for k in RUN_KEYS}, **layout}
    header["config"] = {k: v for k, v in meta["config"].items() if k in DEPLOY_SECTIONS}
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    tensors["header"] = torch.frombuffer(bytearray(zlib.compress(text, 9)), dtype=torch.uint8)
    return write_lowbit_file(path, tensors, json.dumps({"format": FORMAT}))


def read_header(tensors: dict[str, torch.Tensor], path: Any) -> dict[str, Any]:
    """The JSON header stored (compressed) in a packed file's `header` tensor."""
    blob = tensors.get("header")
    try:
        if blob is None or blob.dtype != torch.uint8:
            raise ValueError("no uint8 header tensor")
        header = json.loads(zlib.decompress(blob.numpy().tobytes()))
    except (ValueError, zlib.error) as exc:
        raise CheckpointError(f"packed model {path}: unreadable header ({exc})") from exc
    if not isinstance(header, dict) or not isinstance(header.get("layers"), list):
        raise CheckpointError(f"packed model {path}: its header is not a layout object")
    return header


class _Reader:
    """Hands out consecutive slices of the flat blobs, with errors naming the file."""

    def __init__(self, tensors: dict[str, torch.Tensor], path: Any) -> None:
        self.tensors, self.path = tensors, path
        self.pos = {k: 0 for k in tensors}
        self.decoded: torch.Tensor | None = None

    def take(self, key: str, count: int) -> torch.Tensor:
        blob = self.tensors.get(key)
        start = self.pos.get(key, 0)
        if blob is None or blob.dim() != 1 or start + count > blob.numel():
            raise CheckpointError(f"packed model {self.path}: blob {key} is missing or too short "
                                  "for the model its config builds")
        self.pos[key] = start + count
        return blob[start : start + count]

    def codes(self, count: int, bits: int) -> torch.Tensor:
        """The next `count` code indices (int64), bit-packed or entropy-decoded."""
        if self.decoded is None:
            return unpack_bits(self.take("codes", -(-count * bits // 8)), bits, count)
        return self.take("codes", count)

    def decode_entropy(self, codec: Any, count: int) -> None:
        """Decode the whole `codes` blob of an entropy-coded file (`count` indices in all)."""
        if codec != "lzma":
            raise CheckpointError(f"packed model {self.path}: unknown codes codec {codec!r}")
        try:
            stored = self.tensors.get("codes", torch.zeros(0, dtype=torch.uint8)).numel()
            self.decoded = entropy_decode(self.take("codes", stored), count)
        except ValueError as exc:
            raise CheckpointError(f"packed model {self.path}: {exc}") from exc
        self.tensors, self.pos["codes"] = {**self.tensors, "codes": self.decoded}, 0

    def values(self, like: torch.Tensor) -> torch.Tensor:
        key = f"values.{str(like.dtype)[6:]}"
        return self.take(key, like.numel()).reshape(like.shape).clone()

    def check_consumed(self) -> None:
        left = [k for k, v in self.tensors.items() if k != "header" and self.pos[k] != v.numel()]
        if left:
            raise CheckpointError(f"packed model {self.path}: blob {left[0]} holds more than "
                                  "the model its config builds")


def restore_packed(model: nn.Module, tensors: dict[str, torch.Tensor], header: dict[str, Any],
                   path: Any) -> nn.Module:
    """Fill `model` (built from the header's config) with a packed file's contents; eval mode."""
    entries = [_entry(model, entry, path) for entry in header["layers"]]
    reader = _Reader(tensors, path)
    if "codec" in header:
        reader.decode_entropy(header["codec"], sum(e[3].weight.numel() for e in entries))
    names = [_restore_layer(entry, reader, path) for entry in entries]
    items = _state_items(model, names)
    if state_digest(items) != header.get("state_digest"):
        raise CheckpointError(f"packed model {path} does not match the model its config builds "
                              "(different layers or state); export it again from its checkpoint")
    state = {}
    for key, ref in items:
        state[key] = reader.values(ref)
        check_tensor(key, state[key], ref, path)
    reader.check_consumed()
    model.load_state_dict(state, strict=False)
    return model.eval()


def _restore_layer(entry: tuple[str, int, list[int], Any], reader: _Reader, path: Any) -> str:
    """Install the `Decoded` quantizer of one checked `_entry`."""
    name, bits, scale_shape, layer = entry
    weight, q = layer.weight, layer.weight_quant
    table = q.code_range()
    if bits != _bits(table):
        raise CheckpointError(f"packed model {path}: {name} is stored at {bits} bits, its "
                              f"quantizer has {len(table)} codes ({_bits(table)} bits)")
    idx = reader.codes(weight.numel(), bits)
    if idx.numel() and int(idx.max()) >= len(table):
        raise CheckpointError(f"packed model {path}: codes of {name} lie outside its codebook")
    scale = reader.values(torch.empty(scale_shape, dtype=weight.dtype))
    check_tensor(f"{name}.weight.scale", scale, scale, path)
    frozen = Decoded(q, table[idx].view(weight.shape), scale)
    try:
        with torch.no_grad():
            value = frozen(weight)
        assert value.shape == weight.shape
    except (RuntimeError, AssertionError) as exc:
        raise CheckpointError(f"packed model {path}: the scale of {name} has shape "
                              f"{scale_shape}, which does not fit its weights") from exc
    layer.weight_quant = frozen
    with torch.no_grad():
        weight.copy_(value)
    return name


def _entry(model: nn.Module, entry: Any, path: Any) -> tuple[str, int, list[int], Any]:
    """(name, bits, scale shape, layer) of a well-formed layer entry, else a one-line error."""
    try:
        name, bits, scale_shape = entry
        layer = model.get_submodule(name)
        assert _packable(layer) and isinstance(bits, int) and isinstance(scale_shape, list)
        assert all(isinstance(n, int) and n >= 0 for n in scale_shape)
    except (ValueError, TypeError, AttributeError, AssertionError) as exc:
        raise CheckpointError(f"packed model {path}: bad layer entry {str(entry)[:80]} "
                              "for the model its config builds") from exc
    return name, bits, scale_shape, layer
