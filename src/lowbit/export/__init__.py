"""Deployable artifacts, written from a model: bit-packed weights (`write_packed`) and models with
quantization scales folded into BatchNorm (`fold_bn`, `write_folded`). Loading any of them:
`lowbit.artifacts.load_model`."""

from lowbit.export.fold import FoldedConvBN, fold_bn
from lowbit.export.folded import write_folded
from lowbit.export.frozen import Decoded
from lowbit.export.packed import pack_model, write_packed

__all__ = ["Decoded", "FoldedConvBN", "fold_bn", "pack_model", "write_folded", "write_packed"]
