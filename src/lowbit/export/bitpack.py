"""Bit packing: small unsigned integers stored `bits` per value, little-endian within a byte;
and optional entropy coding of the same integers (`entropy_encode` / `entropy_decode`)."""

from __future__ import annotations

import lzma

import numpy as np
import torch


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers in [0, 2**bits) into a flat uint8 tensor of ceil(n * bits / 8) bytes."""
    if not 1 <= bits <= 8:
        raise ValueError(f"pack_bits supports 1..8 bits, got {bits}")
    flat = values.reshape(-1).to(torch.int64)
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"values must lie in [0, {2**bits}) to pack into {bits} bits")
    shifts = torch.arange(bits, dtype=torch.int64)
    planes = ((flat[:, None] >> shifts) & 1).reshape(-1)  # value-major, LSB first
    pad = (-planes.numel()) % 8
    planes = torch.cat([planes, planes.new_zeros(pad)]).view(-1, 8)
    return (planes << torch.arange(8, dtype=torch.int64)).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first `count` values, as int64."""
    if packed.numel() * 8 < count * bits:
        raise ValueError(f"{packed.numel()} bytes cannot hold {count} values of {bits} bits")
    planes = (packed.to(torch.int64)[:, None] >> torch.arange(8, dtype=torch.int64)) & 1
    planes = planes.reshape(-1)[: count * bits].view(count, bits)
    return (planes << torch.arange(bits, dtype=torch.int64)).sum(1)


# LZMA2 (raw stream, no container) over one byte per code index: its range coder brings skewed
# codebooks (INQ's exponents, ternary zeros) below their fixed bits per weight.
# lc = lp = pb = 0: literals coded order-0 (codes carry no byte-context structure).
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
                  "lc": 0, "lp": 0, "pb": 0}]


def entropy_encode(indices: torch.Tensor) -> torch.Tensor:
    """Compress code indices in [0, 256) to a flat uint8 tensor (see `entropy_decode`)."""
    flat = indices.reshape(-1).to(torch.int64)
    if flat.numel() and (flat.min() < 0 or flat.max() > 255):
        raise ValueError("entropy coding takes code indices in [0, 256)")
    data = flat.to(torch.uint8).numpy().tobytes()
    blob = lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


def entropy_decode(blob: torch.Tensor, count: int) -> torch.Tensor:
    """The first `count` indices of an `entropy_encode` blob, as int64 (never more: no bomb)."""
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    try:
        data = dec.decompress(blob.numpy().tobytes(), max_length=count)
    except lzma.LZMAError as exc:
        raise ValueError(f"corrupt entropy-coded codes ({exc})") from exc
    if len(data) != count:
        raise ValueError(f"entropy-coded codes hold {len(data)} values, expected {count}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64))
