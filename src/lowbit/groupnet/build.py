"""Build a Group-Net from any float model (Zhuang, Shen, Reid 2018; spec §5).

`expand(model, spec)` does, in order:

1. ReLU edits (on the float model): with 1-bit activations every `nn.ReLU` becomes the identity
   (`sign_relu: identity`; a sign of a ReLU output would be +1 everywhere), so each sign reads
   a BN output (or BN + shortcut), as in Bi-Real/XNOR; for networks with residual blocks the
   last ReLU before the classifier is removed (`remove_last_relu`, the paper's Sec. 4.1).
2. Structure, still in float: `layerwise` replaces every quantized conv/linear by a `BranchSum`
   of K copies (Eq. 3); `v1`/`v2`/`v3`/`groups` replace each group of units (see
   `lowbit.groupnet.units`) by a `BranchSum` of K copies of the whole chain (Eqs. 5-6): the
   group's first module becomes the `BranchSum`, the others become `nn.Identity`.
3. A structural check: with K identical float copies and lambda = 1/K the network must compute
   what the float one computes (eval mode, a seeded input). A group whose chain is not called
   module after module (a skip connection or a functional op crosses its boundary) fails it,
   and the build stops with a one-line `LowbitError`.
4. Initialisation: `float` keeps the float weights and perturbs each base's conv/linear weights
   by `perturbation * std(W) * N(0, 1)` (seeded), so the bases differ and their binarizations
   are not identical; `scratch` re-initialises every layer (`reset_parameters`). lambda starts
   at 1/K (`lambda_init: mean`: the ensemble of identical bases is the float group) or U(0, 1)
   (`rand`, the official code's `torch.rand`).
5. Quantization: every conv/linear except the first and the last (float unless
   `quantize_first_last`) becomes a `BinaryConv2d` / `QuantLinear` with binary weights
   sign(W)*mean|W| per output filter (`per_filter`, Eq. 1) and k-bit activations on [0, beta]
   (Eq. 2) or sign activations with the Bi-Real gradient, +1 padding and XNOR scales (k = 1).
   Biases of quantized layers are dropped (`keep_bias: false`: the paper uses none).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.groupnet import units as U
from lowbit.nn.layers import QuantLinear
from lowbit.nn.multibranch import BinaryConv2d, BranchSum
from lowbit.quant.registry import get_quantizer

STRUCTURES = ("layerwise", "v1", "v2", "v3", "groups")


@dataclass
class GroupNetOptions:
    """The Group-Net knobs a `quant:` section and the builder share (one definition for both).

    Attributes:
        structure: layerwise (Eq. 3), v1 / v2 / v3 (1, 2 or all units per group), or groups.
        bases: K, the number of binary bases per layer or group.
        groups: structure "groups": a partition as lists of regexes over unit names (Eq. 6).
        blocks: regexes (on names) or class names of the units; None: *Block / *Bottleneck
            modules, or conv/linear layers with their followers in plain networks.
        init: "float" (copy + perturbation) or "scratch" (re-initialise every layer).
        perturbation: std of the noise added to each base's weights, relative to std(W).
        lambda_init: "mean" (1/K) or "rand" (U(0, 1), the official code).
        gates: learned soft connections between consecutive groups (CVPR'19 "Group-Net**").
        keep_bias: keep the biases of quantized layers (default: dropped, as in the paper).
        remove_last_relu: drop the ReLU before the classifier of residual networks (Sec. 4.1).
        sign_relu: with act_bits 1, "identity" replaces every nn.ReLU by the identity.
        pad_value: padding value of sign-activation convs (+1 or -1; None: zeros).
        act_scale: XNOR-Net activation scales for sign-activation convs.
        seed: seeds the perturbation and random lambdas.
    """

    structure: Literal["layerwise", "v1", "v2", "v3", "groups"] = "v1"
    bases: int = 5
    groups: list[list[str]] | None = None
    blocks: list[str] | None = None
    init: Literal["float", "scratch"] = "float"
    perturbation: float = 0.01
    lambda_init: Literal["mean", "rand"] = "mean"
    gates: bool = False
    keep_bias: bool = False
    remove_last_relu: bool = True
    sign_relu: Literal["identity", "keep"] = "identity"
    pad_value: float | None = 1.0
    act_scale: bool = True
    seed: int = 0

    def options(self) -> dict[str, Any]:
        """These knobs as keyword arguments (for a GroupNetSpec)."""
        return {f.name: getattr(self, f.name) for f in fields(GroupNetOptions)}


@dataclass
class GroupNetSpec(GroupNetOptions):
    """Everything `expand` needs: the shared options plus what the recipe derives from its
    weight/act specs and `keep_float`.

    Attributes:
        act_bits: 1 (sign), 2..16 (uniform on [0, beta]), None or 32 (float activations).
        beta: the fixed clip of k-bit activations (Eq. 2).
        per_filter: one mean|W| per output filter (XNOR); False: one per layer (the official
            code's choice, spec §5.2).
        quantize_first_last: also binarize the first and last layers (default: float).
        input_size: side of the square test input of the structural check.
    """

    act_bits: int | None = 4
    beta: float = 1.0
    per_filter: bool = True
    quantize_first_last: bool = False
    input_size: int = 32

    def weight_spec(self) -> dict[str, Any]:
        """Eq. 1: sign(W) * mean|W|, per output filter (XNOR) or per layer."""
        return {"name": "binary", "per_channel": self.per_filter}

    def act_spec(self) -> dict[str, Any] | None:
        """Eq. 2 (k >= 2: clip to [0, beta], k-bit uniform, clipped STE), sign for k = 1,
        None for float activations."""
        if self.act_bits is None or self.act_bits >= 32:
            return None
        if self.act_bits == 1:
            return {"name": "sign"}
        return {"name": "uniform", "bits": self.act_bits, "signed": False, "clip": "fixed",
                "clip_value": self.beta}

    @property
    def binary_acts(self) -> bool:
        return self.act_bits == 1


# ---- converters: (name, float module, spec) -> module, registrable as they are ----------------
def to_binary_conv(name: str, module: nn.Conv2d, spec: GroupNetSpec) -> BinaryConv2d:
    """One conv with binary weights and the spec's activations (+1 padding, XNOR scales at k=1)."""
    act = spec.act_spec()
    layer = BinaryConv2d.from_float(
        module, get_quantizer(spec.weight_spec()), get_quantizer(act) if act else None,
        pad_value=spec.pad_value if spec.binary_acts else None,
        act_scale=spec.binary_acts and spec.act_scale)
    return _drop_bias(layer, spec)


def to_binary_linear(name: str, module: nn.Linear, spec: GroupNetSpec) -> QuantLinear:
    """One linear layer with binary weights and the spec's activations."""
    act = spec.act_spec()
    layer = QuantLinear.from_float(module, get_quantizer(spec.weight_spec()),
                                   get_quantizer(act) if act else None)
    return _drop_bias(layer, spec)


def to_layerwise(name: str, module: nn.Module, spec: GroupNetSpec) -> BranchSum:
    """Eq. 3: K quantized copies of one conv/linear, summed with learned lambda."""
    expanded = float_expansion([module], spec)
    for i, branch in enumerate(expanded.branches):
        expanded.branches[i] = _quantize_one(f"{name}.branches.{i}", branch, spec)
    return expanded


def float_expansion(chain: list[nn.Module], spec: GroupNetSpec) -> BranchSum:
    """K float deep copies of a chain of modules, lambda initialised per `spec.lambda_init`."""
    k = spec.bases
    if spec.lambda_init == "rand":
        scales = torch.rand(k, generator=torch.Generator().manual_seed(spec.seed)).tolist()
    else:
        scales = [1.0 / k] * k
    base = chain[0] if len(chain) == 1 else nn.Sequential(*chain)
    return BranchSum([copy.deepcopy(base) for _ in range(k)], scales, gated=spec.gates)


def _quantize_one(name: str, module: nn.Module, spec: GroupNetSpec) -> nn.Module:
    if type(module) is nn.Conv2d:
        return to_binary_conv(name, module, spec)
    if type(module) is nn.Linear:
        return to_binary_linear(name, module, spec)
    return module


def _drop_bias(layer: nn.Module, spec: GroupNetSpec) -> Any:
    if not spec.keep_bias and getattr(layer, "bias", None) is not None:
        layer.register_parameter("bias", None)
    return layer


# ---- the whole build ---------------------------------------------------------------------------
def expand(model: nn.Module, spec: GroupNetSpec) -> nn.Module:
    """The Group-Net of `model` per `spec` (see the module docstring); modifies `model`."""
    if spec.bases < 1:
        raise LowbitError(f"groupnet: bases (K) must be >= 1, got {spec.bases}")
    x = U.example_input(model, spec.input_size)
    order = U.call_order(model, x)
    layers = U.weight_layers(model, order)
    keep_float = set() if spec.quantize_first_last else {layers[0], layers[-1]}
    blocks = U.find_blocks(model, order, spec.blocks)
    _edit_relus(model, order, layers, spec, residual=bool(blocks))
    reference = copy.deepcopy(model).eval()
    if spec.structure == "layerwise":
        targets = [[n] for n in layers if n not in keep_float]
        labels = targets
    else:
        units = blocks or U.layer_units(model, order, keep_float)
        if not units:
            raise LowbitError("groupnet: no block or quantizable layer to group")
        grouped = (U.user_groups(units, spec.groups or []) if spec.structure == "groups"
                   else U.preset_groups(units, spec.structure))
        targets = [[n for u in g for n in u.names] for g in grouped]
        labels = [[u.name for u in g] for g in grouped]
    sums = [_replace_chain(model, chain, spec) for chain in targets]
    _check_same_function(reference, model, x, labels)
    if spec.gates:
        for prev, nxt in zip(sums, sums[1:], strict=False):
            nxt.link(prev)
    _initialise(model, sums, spec)
    return _quantize_all(model, keep_float, spec)


def _edit_relus(model: nn.Module, order: list[str], layers: list[str], spec: GroupNetSpec,
                residual: bool) -> None:
    modules = dict(model.named_modules())
    relus = [n for n in order if isinstance(modules[n], nn.ReLU)]
    drop: list[str] = []
    if spec.binary_acts and spec.sign_relu == "identity":
        drop = relus
    elif residual and spec.remove_last_relu:
        last = order.index(layers[-1])
        drop = [n for n in relus if order.index(n) < last][-1:]
    for name in drop:
        _set(model, name, nn.Identity())


def _replace_chain(model: nn.Module, chain: list[str], spec: GroupNetSpec) -> BranchSum:
    modules = dict(model.named_modules())
    expanded = float_expansion([modules[n] for n in chain], spec)
    _set(model, chain[0], expanded)
    for name in chain[1:]:
        _set(model, name, nn.Identity())
    return expanded


def _check_same_function(reference: nn.Module, model: nn.Module, x: torch.Tensor,
                         groups: list[list[str]]) -> None:
    """K identical float bases with lambda = 1/K must compute the float function."""
    scales = [(m, m.scales.detach().clone()) for m in model.modules() if isinstance(m, BranchSum)]
    with torch.no_grad():
        for m, _ in scales:
            m.scales.fill_(1.0 / m.num_branches)
        was = model.training
        try:
            want, got = reference(x), model.eval()(x)
            same = got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-4)
        except RuntimeError:
            same = False
        finally:
            model.train(was)
            for m, s in scales:
                m.scales.copy_(s)
    if not same:
        raise LowbitError(
            "groupnet: this grouping cannot be built: some group in "
            f"{groups[:4]}{' ...' if len(groups) > 4 else ''} is not a chain of modules called "
            "one after another (a skip connection or a functional op crosses its boundary); "
            "group whole blocks (blocks:/groups: in the quant section)")


def _initialise(model: nn.Module, sums: list[BranchSum], spec: GroupNetSpec) -> None:
    if spec.init == "scratch":
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset) and not isinstance(m, BranchSum):
                reset()
        return
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for s in sums:
            for branch in s.branches:
                for m in branch.modules():
                    if isinstance(m, U.WEIGHT_LAYERS) and spec.perturbation > 0:
                        noise = torch.randn(m.weight.shape, generator=gen).to(m.weight)
                        m.weight.add_(noise * (spec.perturbation * m.weight.std()))


def quantize_chain(module: nn.Module, spec: GroupNetSpec) -> nn.Module:
    """Every conv/linear inside `module` (e.g. the K copies of a group) binarized per `spec`."""
    return _quantize_all(module, set(), spec)


def _quantize_all(model: nn.Module, keep_float: set[str], spec: GroupNetSpec) -> nn.Module:
    original = {id(m) for n, m in model.named_modules() if n in keep_float}
    for name, module in list(model.named_modules()):
        if id(module) not in original and type(module) in (nn.Conv2d, nn.Linear):
            _set(model, name, _quantize_one(name, module, spec))
    return model


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)
