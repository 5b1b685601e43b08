"""Group-Net (Zhuang, Shen, Reid 2018): binary weights, low-bit activations, and the network
expanded into K binary bases per layer (`layerwise`) or per group of blocks (`v1`, `v2`, `v3`,
any partition), built from any float model. See `lowbit.groupnet.build` for the procedure,
`lowbit.groupnet.units` for how blocks are found, `lowbit.groupnet.complexity` for Eq. 4."""

from lowbit.groupnet.build import (
    STRUCTURES,
    GroupNetSpec,
    expand,
    float_expansion,
    to_binary_conv,
    to_binary_linear,
    to_layerwise,
)

__all__ = ["STRUCTURES", "GroupNetSpec", "expand", "float_expansion", "to_binary_conv",
           "to_binary_linear", "to_layerwise"]
