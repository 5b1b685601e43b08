"""One-call conversion of a float model into a fake-quantized one, and back.

`quantize_model(model, rules)` swaps `nn.Conv2d` / `nn.Linear` layers for `QuantConv2d` /
`QuantLinear`. `rules` is an ordered mapping; each key is a regex (`re.fullmatch`ed against the
qualified name from `named_modules()`, e.g. `r"layer\\d\\..*conv\\d"`) or a module type
(`nn.Linear`, matched with `isinstance`); each value is a spec or `None` (keep float). A layer
takes the first rule that matches it. A spec is one of:

- `{"weight": q, "act": q}` with each `q` a quantizer name, a config dict (`{"name": "uniform",
  "bits": 4}`), a `Quantizer` instance (deep-copied per layer) or None; either key may be left out;
- a bare `q` (shorthand for `{"weight": q}`).

Each converted layer gets its own quantizer instances. A rule that matches no module name is an
error, and so is a rule whose spec would convert nothing but unsupported layers (LSTM,
ConvTranspose2d, a container matched by name, ...): rules address single conv/linear layers.

Default rules (`rules=None`, `weight=`/`act=` given): the first `nn.Conv2d` and the last `nn.Linear`
(or the last `nn.Conv2d` if the model has no Linear), both in `named_modules()` registration order,
stay float, as in most low-bit papers; every other Conv2d and Linear is quantized.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

import lowbit.quant  # noqa: F401  (importing the package registers the built-in quantizers)
from lowbit.errors import LowbitError
from lowbit.nn.layers import QuantConv2d, QuantLinear
from lowbit.quant.base import Quantizer
from lowbit.quant.registry import get_quantizer

log = logging.getLogger(__name__)

QuantSpec = str | Mapping[str, Any] | Quantizer
_FLOAT_TO_QUANT: dict[type[nn.Module], type[QuantConv2d] | type[QuantLinear]] = {
    nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


@dataclass
class ConvertedLayer:
    """A layer quantize_model replaced; `weight`/`act` are its quantizers' configs (or None)."""

    name: str
    type: str
    weight: dict[str, Any] | None
    act: dict[str, Any] | None
    rule: str
    aliases: list[str] = field(default_factory=list)


@dataclass
class FloatLayer:
    """A weight-bearing layer left in float, and why."""

    name: str
    type: str
    reason: str


@dataclass
class QuantizationReport:
    """What quantize_model did. `model` is the converted model (a copy unless `inplace`)."""

    model: nn.Module
    converted: list[ConvertedLayer]
    kept_float: list[FloatLayer]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the model itself is left out)."""
        return {"converted": [vars(c) for c in self.converted],
                "kept_float": [vars(f) for f in self.kept_float]}

    def __str__(self) -> str:
        conv = [[", ".join([c.name, *c.aliases]), c.type, _describe(c.weight), _describe(c.act),
                 c.rule] for c in self.converted]
        kept = [[f.name, f.type, f.reason] for f in self.kept_float]
        return (f"quantized layers ({len(conv)}):\n"
                + _text_table(["layer", "type", "weight", "act", "rule"], conv)
                + f"\nfloat layers ({len(kept)}):\n"
                + _text_table(["layer", "type", "reason"], kept))


@dataclass
class _LayerSpec:
    weight: QuantSpec | None
    act: QuantSpec | None


@dataclass
class _Rule:
    label: str
    matches: Callable[[str, nn.Module], bool]
    spec: _LayerSpec | None


@dataclass
class _Entry:
    """One module object with every qualified name it is registered under."""

    module: nn.Module
    names: list[str]


def quantize_model(model: nn.Module, rules: Mapping[Any, Any] | None = None, *,
                   weight: QuantSpec | None = None, act: QuantSpec | None = None,
                   inplace: bool = False) -> QuantizationReport:
    """Replace the model's Conv2d/Linear layers by quantized ones, per `rules` (see module doc).

    Args:
        model: any nn.Module built from standard layers (containers, shared modules allowed).
        rules: ordered {regex str | nn.Module type: spec | None}; first match wins. None: the
            default rules.
        weight: with `rules=None`, the weight quantizer spec for the default rules.
        act: with `rules=None`, the activation (layer input) quantizer spec.
        inplace: modify `model` itself instead of a deep copy.

    Returns:
        A QuantizationReport; `report.model` is the converted model.

    Raises:
        LowbitError: bad or unmatched rules, unsupported layer types, unknown quantizers.
    """
    if rules is not None and (weight is not None or act is not None):
        raise LowbitError("give either rules= or weight=/act= (the default rules), not both")
    if not inplace:
        model = copy.deepcopy(model)
    entries = _entries(model)
    compiled = (_compile_rules(rules) if rules is not None
                else _default_rules(entries, _normalize(dict(weight=weight, act=act), "default")))
    claims = _claims(entries, compiled)
    _check_rules(entries, compiled, claims)
    converted, kept = [], []
    for entry, rule in zip(entries, claims, strict=True):
        if rule is not None and rule.spec is not None and _convertible(entry):
            model, done = _convert(model, entry, rule)
            converted.append(done)
        elif _is_weight_layer(entry.module):
            kept.append(FloatLayer(entry.names[0], type(entry.module).__name__,
                                   _float_reason(entry.module, rule)))
    log.debug("quantized %d layers, kept %d in float", len(converted), len(kept))
    return QuantizationReport(model, converted, kept)


def every_layer_rules(model: nn.Module, spec: Any) -> dict[type[nn.Module], Any]:
    """Rules that give every Conv2d and Linear of `model` the same `spec`, first and last
    layers included (only the types the model has, since a rule matching nothing is an error)."""
    present = {type(m) for m in model.modules()}
    return {kind: spec for kind in _FLOAT_TO_QUANT if kind in present}


def dequantize_model(model: nn.Module, *, keep_act: bool = True,
                     inplace: bool = False) -> nn.Module:
    """Bake each quantized weight into its layer: the deployable form of a quantized model.

    Every QuantConv2d/QuantLinear's weight becomes its quantized value (`to_float()`). With
    `keep_act` (default), a layer that quantizes its input stays a Quant layer with
    `weight_quant=None` and its activation quantizer, so outputs equal the quantized model's;
    otherwise all layers become plain float layers and inputs are no longer quantized.

    Args:
        model: a model holding QuantConv2d / QuantLinear layers (others are left as they are).
        keep_act: keep input quantization (state_dict keys `act_quant.*` stay).
        inplace: modify `model` itself instead of a deep copy.

    Returns:
        The model with quantized weights baked in; shared layers stay shared.
    """
    if not inplace:
        model = copy.deepcopy(model)
    for entry in _entries(model):
        layer = entry.module
        if not isinstance(layer, QuantConv2d | QuantLinear):
            continue
        new: nn.Module = layer.to_float()
        if keep_act and layer.act_quant is not None:
            new = type(layer).from_float(new, None, layer.act_quant)  # type: ignore[arg-type]
        for name in entry.names:
            model = _set_submodule(model, name, new)
    return model


def _entries(model: nn.Module) -> list[_Entry]:
    """Every module once, in named_modules order, with all of its names (shared modules)."""
    by_id: dict[int, _Entry] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        by_id.setdefault(id(module), _Entry(module, [])).names.append(name)
    return list(by_id.values())


def _normalize(spec: Any, label: str) -> _LayerSpec | None:
    """Validate a rule's spec (building each quantizer once) and bring it to one form."""
    if spec is None:
        return None
    if isinstance(spec, str | Quantizer) or (isinstance(spec, Mapping) and "name" in spec):
        spec = {"weight": spec}
    if not isinstance(spec, Mapping) or not spec or set(spec) - {"weight", "act"}:
        raise LowbitError(f"rule {label}: spec must be {{'weight': q, 'act': q}}, a quantizer "
                          f"name/config/instance, or None; got {spec!r}")
    for part in spec.values():
        _build(part, label)  # fail now, before any layer is touched
    out = _LayerSpec(spec.get("weight"), spec.get("act"))
    return None if out.weight is None and out.act is None else out


def _compile_rules(rules: Mapping[Any, Any]) -> list[_Rule]:
    out = []
    for key, spec in rules.items():
        label = key.__name__ if isinstance(key, type) else f"'{key}'"  # no repr: no doubled \\
        layer_spec = _normalize(spec, label)
        if isinstance(key, type) and issubclass(key, nn.Module):
            if layer_spec is not None and not issubclass(key, tuple(_FLOAT_TO_QUANT)):
                raise LowbitError(f"rule {key.__name__}: unsupported layer type {key.__name__}; "
                                  "quantize_model converts nn.Conv2d and nn.Linear")
            out.append(_Rule(label, _type_matcher(key), layer_spec))
        elif isinstance(key, str):
            try:
                pattern = re.compile(key)
            except re.error as exc:
                raise LowbitError(f"rule {label}: invalid regular expression ({exc})") from exc
            out.append(_Rule(label, _name_matcher(pattern), layer_spec))
        else:
            raise LowbitError(f"rule keys must be regex strings or nn.Module types, got {key!r}")
    return out


def _default_rules(entries: list[_Entry], spec: _LayerSpec | None) -> list[_Rule]:
    if spec is None:
        raise LowbitError("nothing to quantize: give rules= or a weight=/act= quantizer spec")
    convs = [e.module for e in entries if isinstance(e.module, nn.Conv2d)]
    linears = [e.module for e in entries if isinstance(e.module, nn.Linear)]
    if not convs and not linears:
        raise LowbitError("the model has no nn.Conv2d or nn.Linear layer to quantize")
    rules = []
    if convs:
        rules.append(_Rule("default: first conv", _object_matcher(convs[0]), None))
    rules.append(_Rule("default: last layer", _object_matcher((linears or convs)[-1]), None))
    for kind in (nn.Conv2d, nn.Linear):
        if any(isinstance(e.module, kind) for e in entries):
            rules.append(_Rule(kind.__name__, _type_matcher(kind), spec))
    return rules


# Matchers by name, type or identity; identity keeps a shared layer's names on one rule.
def _name_matcher(pattern: re.Pattern[str]) -> Callable[[str, nn.Module], bool]:
    return lambda name, _module: pattern.fullmatch(name) is not None


def _type_matcher(kind: type[nn.Module]) -> Callable[[str, nn.Module], bool]:
    return lambda _name, module: isinstance(module, kind)


def _object_matcher(obj: nn.Module) -> Callable[[str, nn.Module], bool]:
    return lambda _name, module: module is obj


def _claims(entries: list[_Entry], rules: list[_Rule]) -> list[_Rule | None]:
    """The first matching rule of each module; a module's names must agree on it."""
    claims: list[_Rule | None] = []
    for entry in entries:
        firsts = {id(r): r for r in (_first_match(n, entry.module, rules) for n in entry.names)}
        if len(firsts) > 1:
            raise LowbitError(f"module shared as {', '.join(entry.names)} matches different rules "
                              f"({', '.join(r.label if r else 'none' for r in firsts.values())}); "
                              "make its names match the same rule")
        claims.append(next(iter(firsts.values())))
    return claims


def _first_match(name: str, module: nn.Module, rules: list[_Rule]) -> _Rule | None:
    return next((r for r in rules if r.matches(name, module)), None)


def _check_rules(entries: list[_Entry], rules: list[_Rule], claims: list[_Rule | None]) -> None:
    """Every rule must match some module; a quantizing rule must not aim at unsupported layers."""
    for rule in rules:
        matched = [e for e in entries if any(rule.matches(n, e.module) for n in e.names)]
        if not matched:
            names = [e.names[0] for e in entries if _is_weight_layer(e.module)] or [
                e.names[0] for e in entries]
            raise LowbitError(f"rule {rule.label} matches no module; module names look like: "
                              f"{', '.join(repr(n) for n in names[:6])}")
        mine = [e for e, c in zip(entries, claims, strict=True) if c is rule]
        if rule.spec is None or any(_convertible(e) for e in mine):
            continue
        # Converts nothing. Fine if earlier rules took its conv/linear layers (it is shadowed);
        # an error if it aims at weight layers lowbit cannot quantize, or at no layer at all.
        bad = [e for e in mine if _is_weight_layer(e.module)]
        if bad or not any(_convertible(e) for e in matched):
            bad = bad or matched
            found = ", ".join(sorted({type(e.module).__name__ for e in bad}))
            raise LowbitError(f"rule {rule.label}: unsupported layer type {found} (matched "
                              f"{', '.join(repr(e.names[0]) for e in bad[:4])}); quantize_model "
                              "converts nn.Conv2d and nn.Linear: match those layers by name")


def _convertible(entry: _Entry) -> bool:
    return type(entry.module) in _FLOAT_TO_QUANT


def _convert(model: nn.Module, entry: _Entry, rule: _Rule) -> tuple[nn.Module, ConvertedLayer]:
    assert rule.spec is not None
    wq, aq = _build(rule.spec.weight, rule.label), _build(rule.spec.act, rule.label)
    new = _FLOAT_TO_QUANT[type(entry.module)].from_float(entry.module, wq, aq)  # type: ignore[arg-type]
    for name in entry.names:  # a shared module becomes one shared quantized module
        model = _set_submodule(model, name, new)
    done = ConvertedLayer(entry.names[0], type(entry.module).__name__,
                          wq.to_config() if wq else None, aq.to_config() if aq else None,
                          rule.label, entry.names[1:])
    return model, done


def _build(spec: QuantSpec | None, label: str) -> Quantizer | None:
    """A fresh quantizer per call: quantizers can hold state (learned scales, masks)."""
    if spec is None:
        return None
    if isinstance(spec, Quantizer):
        return copy.deepcopy(spec)
    if not isinstance(spec, str | Mapping):
        raise LowbitError(f"rule {label}: a quantizer spec must be a name, config dict or "
                          f"Quantizer, got {type(spec).__name__}")
    try:
        return get_quantizer(spec if isinstance(spec, str) else dict(spec))
    except LowbitError:
        raise
    except ValueError as exc:  # a quantizer rejecting its arguments (e.g. bits out of range)
        raise LowbitError(f"rule {label}: {exc}") from exc


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` at qualified `name`; returns the model (itself `new` when name is the root)."""
    if not name:
        return new
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)
    return model


def _is_weight_layer(module: nn.Module) -> bool:
    """Has a matrix/kernel parameter of its own (conv, linear, RNN, embedding; not norms)."""
    if isinstance(module, Quantizer):
        return False
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


def _float_reason(module: nn.Module, rule: _Rule | None) -> str:
    if isinstance(module, QuantConv2d | QuantLinear):
        return "already quantized (left as is)"
    if rule is None:
        return "no rule matched"
    if rule.spec is None:
        return f"kept float by rule {rule.label}"
    return f"unsupported type (rule {rule.label})"


def _describe(cfg: dict[str, Any] | None) -> str:
    if cfg is None:
        return "float"
    args = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "name")
    return f"{cfg.get('name', '?')}({args})"


def _text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
