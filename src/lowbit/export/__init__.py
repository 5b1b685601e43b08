"""Deployable artifacts: bit-packed weights (`export_packed` / `load_packed`)."""

from lowbit.export.packed import export_packed, load_packed, pack_model, read_packed

__all__ = ["export_packed", "load_packed", "pack_model", "read_packed"]
