"""Group-Net — binary weights, low-bit activations, K binary bases ("network expansion")
(Zhuang, Shen, Reid; arXiv 1808.02631, 2018; spec §5).

Instead of approximating each float value, the network's structure changes: each float group
(a layer, one residual block, two blocks, the whole body, or any partition into runs of blocks)
is replaced by K quantized copies of itself whose outputs are summed with learned scalars
lambda_i (Eqs. 3, 5, 6). Weights are sign(W)*mean|W| per output filter with the identity STE
(Eq. 1); activations are clipped to [0, beta] (beta fixed) and quantized linearly to k bits with
the clipped STE (Eq. 2), or, for k = 1, binarized by sign with the Bi-Real gradient, +1 padding
and XNOR-Net scale factors. First and last layers stay float, there is no bias, and the ReLU
before a ResNet's classifier is removed. Training is plain QAT of all bases and lambdas at
once (Algorithm 1); the paper trains k >= 2 from scratch at lr 0.05 and k = 1 from a float
model at lr 0.001 (the shipped recipes start every row from the float checkpoint to fit a CPU
budget). The build is `lowbit.groupnet.expand`, from any float model.

Config (`quant:` section, defaults are the paper's):

    method: groupnet
    structure: v1            # layerwise | v1 (1 block/group) | v2 (2) | v3 (whole body) | groups
    bases: 5                 # K
    weight_bits: 1           # binary weights (the only choice)
    act_bits: 4              # 1 (sign), 2..16 (uniform on [0, beta]), or null (float)
    beta: 1.0
    groups: null             # structure: groups -> [[regex, ...], ...] over block names
    blocks: null             # regexes or class names of the blocks; null: *Block/*Bottleneck,
                             # and conv/linear layers with their BN/ReLU/pool in plain networks
    init: float              # float (copy + perturbation) | scratch
    perturbation: 0.01       # relative to each weight tensor's std
    gates: false             # learned soft connections between groups (the CVPR'19 variant)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lowbit.groupnet import GroupNetSpec, expand
from lowbit.recipes import Recipe, register_recipe
from lowbit.schema import require


@dataclass
class GroupNetConfig(GroupNetSpec):
    """The `quant:` section for `method: groupnet`: a `GroupNetSpec` plus `weight_bits`."""

    weight_bits: int = 1

    def validate(self) -> None:
        require(self.weight_bits == 1, f"groupnet weights are binary: weight_bits must be 1, "
                f"got {self.weight_bits}")
        require(self.bases >= 1, f"bases (K) must be >= 1, got {self.bases}")
        require(self.act_bits is None or 1 <= self.act_bits <= 16 or self.act_bits == 32,
                f"act_bits must be 1..16, 32 or null, got {self.act_bits}")
        require(self.beta > 0, f"beta must be > 0, got {self.beta}")
        require(self.perturbation >= 0, f"perturbation must be >= 0, got {self.perturbation}")
        require((self.structure == "groups") == bool(self.groups),
                "give groups: [[block regex, ...], ...] exactly when structure is 'groups'")
        require(self.pad_value is None or self.pad_value in (-1.0, 1.0),
                f"pad_value must be 1, -1 or null (zeros), got {self.pad_value}")


class GroupNetRecipe(Recipe):
    """prepare = build the expanded, quantized network; training is plain QAT; the trained
    model is already the deployable one (its state holds every base, lambda and gate)."""

    def __init__(self, cfg: GroupNetConfig) -> None:
        self.cfg = cfg

    def prepare(self, model: nn.Module) -> nn.Module:
        return expand(model, self.cfg)


@register_recipe("groupnet", GroupNetConfig)
def build_groupnet(cfg: GroupNetConfig) -> Recipe:
    return GroupNetRecipe(cfg)
