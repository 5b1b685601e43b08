"""Quantized layers: drop-in fake-quantized replacements for the float conv/linear layers."""

from lowbit.nn.layers import (
    QuantAct,
    QuantConv2d,
    QuantLayer,
    QuantLinear,
    quantize_layer,
    quantized_class,
)

__all__ = ["QuantAct", "QuantConv2d", "QuantLayer", "QuantLinear", "quantize_layer",
           "quantized_class"]
