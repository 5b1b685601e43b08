"""Bit packing: small unsigned integers stored `bits` per value, little-endian within a byte."""

from __future__ import annotations

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
