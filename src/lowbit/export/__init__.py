"""Deployable artifacts: bit-packed weights (`export_packed` / `load_packed`) and models with
quantization scales folded into BatchNorm (`fold_bn`, `export_folded` / `load_folded`)."""

from lowbit.export.fold import FoldedConvBN, fold_bn
from lowbit.export.folded import export_folded, load_folded
from lowbit.export.packed import export_packed, load_packed, pack_model, read_packed

__all__ = ["FoldedConvBN", "export_folded", "export_packed", "fold_bn", "load_folded",
           "load_packed", "pack_model", "read_packed"]
