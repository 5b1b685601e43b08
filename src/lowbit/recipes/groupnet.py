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
    weight: {name: binary, per_channel: true}    # sign(W) * mean|W| per output filter (Eq. 1)
    act: {name: uniform, bits: 4, signed: false, clip: fixed, clip_value: 1.0}   # Eq. 2, beta
                             # {name: sign} for 1-bit activations; null: float activations
    keep_float: first_last   # none: binarize the first and last layers too
    structure: v1            # layerwise | v1 (1 block/group) | v2 (2) | v3 (whole body) | groups
    bases: 5                 # K
    groups: null             # structure: groups -> [[regex, ...], ...] over block names
    blocks: null             # regexes or class names of the blocks; null: *Block/*Bottleneck,
                             # and conv/linear layers with their BN/ReLU/pool in plain networks
    init: float              # float (copy + perturbation) | scratch
    perturbation: 0.01       # relative to each weight tensor's std
    gates: false             # learned soft connections between groups (the CVPR'19 variant)

The conversions are registered converters too (`groupnet_layerwise`: one conv/linear -> K
binary branches; `groupnet_group`: one block -> K binary copies), so `quantize_model` rules can
apply them to any layer or block of a user's model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lowbit.groupnet import GroupNetSpec, expand, float_expansion, to_layerwise
from lowbit.groupnet.build import GroupNetOptions, quantize_chain
from lowbit.recipes.base import QuantConfig, Recipe, register_recipe
from lowbit.schema import require
from lowbit.transform import LayerSpec, register_converter


@dataclass
class GroupNetConfig(GroupNetOptions, QuantConfig):
    """The `quant:` section for `method: groupnet`: the common quant fields plus the builder's
    options (`lowbit.groupnet.build.GroupNetOptions`; see the module docstring)."""

    def validate(self) -> None:
        super().validate()
        require(self.bases >= 1, f"bases (K) must be >= 1, got {self.bases}")
        require(self.perturbation >= 0, f"perturbation must be >= 0, got {self.perturbation}")
        require((self.structure == "groups") == bool(self.groups),
                "give groups: [[block regex, ...], ...] exactly when structure is 'groups'")
        require(self.pad_value is None or self.pad_value in (-1.0, 1.0),
                f"pad_value must be 1, -1 or null (zeros), got {self.pad_value}")
        act = self.act or {}
        require(self.act is None or act.get("name") == "sign" or (
            act.get("name") == "uniform" and act.get("clip") == "fixed"
            and act.get("signed") is False),
            "act: Group-Net activations are {name: sign}, a fixed-clip unsigned uniform "
            "({name: uniform, bits: k, signed: false, clip: fixed, clip_value: beta}) or null")

    def spec(self) -> GroupNetSpec:
        """The builder's spec for this section."""
        act = self.act
        act_bits = None if act is None else 1 if act["name"] == "sign" else int(act["bits"])
        beta = float((act or {}).get("clip_value", 1.0))
        return GroupNetSpec(
            **self.options(), act_bits=act_bits, beta=beta,
            per_filter=bool((self.weight or {}).get("per_channel", True)),
            quantize_first_last=self.keep_float == "none")


@register_recipe
class GroupNetRecipe(Recipe):
    """prepare = build the expanded, quantized network; training is plain QAT; the trained
    model is already the deployable one (its state holds every base, lambda and gate)."""

    name = "groupnet"
    config_class = GroupNetConfig
    default_weight = {"name": "binary", "per_channel": True}
    default_act = {"name": "uniform", "bits": 4, "signed": False, "clip": "fixed",
                   "clip_value": 1.0}
    weight_names = ("binary",)
    cfg: GroupNetConfig

    def prepare(self, model: nn.Module) -> nn.Module:
        return expand(model, self.cfg.spec())


def _spec_from_layer(spec: LayerSpec) -> GroupNetSpec:
    """A GroupNetSpec for one converter call: the rule's act spec and options."""
    section = GroupNetConfig(weight=dict(GroupNetRecipe.default_weight),
                             act=spec.act if isinstance(spec.act, dict) else None,
                             **{k: v for k, v in spec.options.items() if k != "convert"})
    return section.spec()


@register_converter("groupnet_layerwise")
def _layerwise(module: nn.Module, spec: LayerSpec) -> nn.Module:
    """Eq. 3: one conv/linear -> K binary branches summed with learned lambda."""
    return to_layerwise("layer", module, _spec_from_layer(spec))


@register_converter("groupnet_group")
def _group(module: nn.Module, spec: LayerSpec) -> nn.Module:
    """Eqs. 5-6 for one block: K binary copies of it summed with learned lambda."""
    gspec = _spec_from_layer(spec)
    return quantize_chain(float_expansion([module], gspec), gspec)
