"""Where a model's blocks are: execution order, the float first/last layers, units and groups.

A *unit* is what Group-Net groups (Zhuang et al. 2018, Sec. 3): a residual block (any module
named by `blocks:` regex or class name; by default every module whose class name ends in
`Block` or `Bottleneck`), or, in a plain network without such blocks, one conv/linear layer
together with the layers that follow it in the same container up to the next conv/linear
(its BN, ReLU, pooling). A *group* is a run of consecutive units. Order is the order in which
one forward pass calls the modules (recorded by hooks), not registration order, which for
the zoo's ResNet blocks differs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import LowbitError

_AUTO_BLOCK = re.compile(r".*(Block|Bottleneck)")
WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


@dataclass
class Unit:
    """One groupable unit: its modules (a block, or a layer and its followers) in call order."""

    names: list[str]

    @property
    def name(self) -> str:
        return self.names[0]


def example_input(model: nn.Module, size: int = 32) -> torch.Tensor:
    """A seeded batch of 2 that the model accepts: channels from its first weight layer."""
    first = next((m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)), None)
    if first is None:
        raise LowbitError("groupnet: the model has no nn.Conv2d or nn.Linear layer")
    gen = torch.Generator().manual_seed(0)
    if isinstance(first, nn.Linear):
        return torch.randn(2, first.in_features, generator=gen)
    side = max(size, int(getattr(model, "min_input_size", 0)))
    return torch.randn(2, first.in_channels, side, side, generator=gen)


def call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Qualified names of the modules in the order one eval forward pass first calls them."""
    order: list[str] = []
    seen: set[str] = set()

    def hook(name: str):  # noqa: ANN202 - a forward pre-hook factory
        def record(_module: nn.Module, _args: object) -> None:
            if name not in seen:
                seen.add(name)
                order.append(name)
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    except RuntimeError as exc:
        raise LowbitError(f"groupnet: the model cannot run on an input of shape "
                          f"{tuple(x.shape)}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order


def weight_layers(model: nn.Module, order: Sequence[str]) -> list[str]:
    """Names of the conv/linear layers in call order."""
    modules = dict(model.named_modules())
    return [n for n in order if isinstance(modules[n], WEIGHT_LAYERS)]


def find_blocks(model: nn.Module, order: Sequence[str],
                patterns: Sequence[str] | None) -> list[Unit]:
    """Outermost modules matching `patterns` (regex on the name, or a class name), in call
    order; `patterns=None`: class names ending in Block/Bottleneck."""
    compiled = [re.compile(p) for p in patterns] if patterns else [_AUTO_BLOCK]
    modules = dict(model.named_modules())

    def matches(name: str) -> bool:
        kind = type(modules[name]).__name__
        if patterns is None:
            return compiled[0].fullmatch(kind) is not None
        return any(p.fullmatch(name) or p.pattern == kind for p in compiled)

    found: list[str] = []
    for name in order:
        if matches(name) and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    if patterns and not found:
        raise LowbitError(f"groupnet: blocks {list(patterns)} match no module that the forward "
                          f"pass calls; names look like {', '.join(list(order)[:6])}")
    return [Unit([n]) for n in found]


def layer_units(model: nn.Module, order: Sequence[str], keep_float: set[str]) -> list[Unit]:
    """Plain-network units: each quantized conv/linear with the leaves that follow it in the
    same container, up to the next conv/linear."""
    modules = dict(model.named_modules())
    leaves = [n for n in order if not any(True for _ in modules[n].children())]
    units = []
    for i, name in enumerate(leaves):
        if not isinstance(modules[name], WEIGHT_LAYERS) or name in keep_float:
            continue
        parent, chain = name.rpartition(".")[0], [name]
        for follower in leaves[i + 1:]:
            if isinstance(modules[follower], WEIGHT_LAYERS) or (
                    follower.rpartition(".")[0] != parent):
                break
            chain.append(follower)
        units.append(Unit(chain))
    return units


def preset_groups(units: list[Unit], structure: str) -> list[list[Unit]]:
    """v1: one unit per group; v2: two consecutive units; v3: all units in one group."""
    if structure == "v1":
        return [[u] for u in units]
    if structure == "v2":
        return [units[i:i + 2] for i in range(0, len(units), 2)]
    if structure == "v3":
        return [units]
    raise ValueError(f"unknown preset {structure!r}")


def user_groups(units: list[Unit], groups: Sequence[Sequence[str]]) -> list[list[Unit]]:
    """A partition given as lists of regexes over unit names: every unit in exactly one group,
    each group a run of consecutive units."""
    index = {u.name: i for i, u in enumerate(units)}
    out: list[list[Unit]] = []
    taken: set[int] = set()
    for spec in groups:
        pats = [re.compile(p) for p in spec]
        members = [u for u in units if any(p.fullmatch(u.name) for p in pats)]
        if not members:
            raise LowbitError(f"groupnet: group {list(spec)} matches no block; blocks are "
                              f"{', '.join(u.name for u in units)}")
        ids = [index[u.name] for u in members]
        if ids != list(range(ids[0], ids[0] + len(ids))):
            raise LowbitError(f"groupnet: group {[u.name for u in members]} is not a run of "
                              "consecutive blocks")
        if taken & set(ids):
            raise LowbitError(f"groupnet: block {units[min(taken & set(ids))].name} is in two "
                              "groups")
        taken |= set(ids)
        out.append(members)
    missing = [u.name for i, u in enumerate(units) if i not in taken]
    if missing:
        raise LowbitError(f"groupnet: blocks {', '.join(missing)} are in no group; list every "
                          "block in groups:")
    return sorted(out, key=lambda g: index[g[0].name])
