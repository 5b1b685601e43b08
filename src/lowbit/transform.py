"""One-call conversion of a float model into a fake-quantized one, and back.

`quantize_model(model, rules)` swaps float modules for quantized ones. `rules` is an ordered
mapping; each key is a regex (`re.fullmatch`ed against the qualified name from
`named_modules()`, e.g. `r"layer\\d\\..*conv\\d"`) or a module type (`nn.Linear`, matched with
`isinstance`); each value is a spec or `None` (keep float). A module takes the first rule that
matches it. A spec is one of:

- `{"weight": q, "act": q}` with each `q` a quantizer name, a config dict (`{"name": "uniform",
  "bits": 4}`), a `Quantizer` instance (deep-copied per layer) or None; either key may be left out;
  `"convert": NAME` picks a registered converter by name, and any further keys are that
  converter's options (e.g. the number of branches of a multi-branch swap);
- a bare `q` (shorthand for `{"weight": q}`);
- a per-layer factory: a callable `(name, module) -> spec | None` (mixed precision: bits per
  layer from a table, say).

Conversions come from a registry: `@register_converter("conv2d", nn.Conv2d)` maps a float type
to a builder `(module, spec) -> nn.Module`; a spec without `convert` uses the converter
registered for the module's exact type. New kinds of swap (one conv -> K branches, one block ->
K quantized copies) are registrations, not edits of this file. A converted module's children are
not visited again.

Each converted layer gets its own quantizer instances. A rule that matches no module name is an
error, and so is a rule whose spec would convert nothing but unsupported modules (LSTM,
ConvTranspose2d, a container with no converter, ...).

Default rules (`rules=None`, `weight=`/`act=` given): the first `nn.Conv2d` and the last `nn.Linear`
(or the last `nn.Conv2d` if the model has no Linear), both in `named_modules()` registration order,
stay float, as in most low-bit papers; every other Conv2d and Linear is quantized.
"""

from __future__ import annotations

import copy
import difflib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

import lowbit.quant  # noqa: F401  (importing the package registers the built-in quantizers)
from lowbit.errors import LowbitError
from lowbit.nn.layers import QuantConv2d, QuantLayer, QuantLinear, quantize_layer
from lowbit.quant.base import Quantizer
from lowbit.quant.registry import get_quantizer
from lowbit.registry import Registry

log = logging.getLogger(__name__)

QuantSpec = str | Mapping[str, Any] | Quantizer


@dataclass(frozen=True)
class LayerSpec:
    """What a rule asks for one module: quantizer specs, a converter name, its options."""

    weight: QuantSpec | None
    act: QuantSpec | None
    convert: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def weight_quantizer(self) -> Quantizer | None:
        """A fresh weight quantizer (quantizers hold state: one per layer)."""
        return _build(self.weight, "weight")

    def act_quantizer(self) -> Quantizer | None:
        """A fresh activation quantizer."""
        return _build(self.act, "act")


@dataclass(frozen=True)
class Converter:
    """A registered conversion: `build(module, spec)` returns the module that replaces it."""

    name: str
    types: tuple[type[nn.Module], ...]
    build: Callable[[nn.Module, LayerSpec], nn.Module]


CONVERTERS: Registry[Converter] = Registry("converter")


def register_converter(
    name: str, *types: type[nn.Module]
) -> Callable[[Callable[[nn.Module, LayerSpec], nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register `build(module, spec) -> nn.Module` as converter `name`, the default
    for modules of exactly the given float `types` (none: only chosen by `convert: name`)."""

    def deco(build: Callable[[nn.Module, LayerSpec], nn.Module]) -> Callable[..., nn.Module]:
        CONVERTERS.add(name, Converter(name, types, build))
        return build

    return deco


@register_converter("conv2d", nn.Conv2d)
def _conv2d(module: nn.Module, spec: LayerSpec) -> nn.Module:
    return QuantConv2d.from_float(module, spec.weight_quantizer(), spec.act_quantizer())  # type: ignore[arg-type]


@register_converter("linear", nn.Linear)
def _linear(module: nn.Module, spec: LayerSpec) -> nn.Module:
    return QuantLinear.from_float(module, spec.weight_quantizer(), spec.act_quantizer())  # type: ignore[arg-type]


@register_converter("twin", nn.Conv1d)
def _twin(module: nn.Module, spec: LayerSpec) -> nn.Module:
    return quantize_layer(module, spec.weight_quantizer(), spec.act_quantizer())


# Subclasses of these get the "twin" converter when no converter names their own type.
TWIN_BASES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)


def converter_for(module: nn.Module, spec: LayerSpec | None = None) -> Converter | None:
    """The converter a spec names, else the one registered for the module's exact type, else
    (a user's subclass of a conv or linear class) the twin converter."""
    if spec is not None and spec.convert is not None:
        return CONVERTERS.get(spec.convert)
    kind = type(module)
    exact = next((CONVERTERS.get(n) for n in CONVERTERS.names()
                  if kind in CONVERTERS.get(n).types), None)
    if exact is None and isinstance(module, TWIN_BASES) and not isinstance(module, QuantLayer):
        return CONVERTERS.get("twin")
    return exact


def _default_types() -> tuple[type[nn.Module], ...]:
    return tuple(t for n in CONVERTERS.names() for t in CONVERTERS.get(n).types)


@dataclass
class ConvertedLayer:
    """A layer quantize_model replaced; `weight`/`act` are its quantizers' configs (or None)."""

    name: str
    type: str
    weight: dict[str, Any] | None
    act: dict[str, Any] | None
    rule: str
    aliases: list[str] = field(default_factory=list)
    converter: str = ""


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
class _Rule:
    label: str
    matches: Callable[[str, nn.Module], bool]
    spec: LayerSpec | Callable[[str, nn.Module], Any] | None

    def spec_for(self, name: str, module: nn.Module) -> LayerSpec | None:
        """The rule's spec for one module (a factory is asked, and its answer checked)."""
        if callable(self.spec):
            return _normalize(self.spec(name, module), f"{self.label} (factory, at {name!r})")
        return self.spec


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
    swapped: list[str] = []  # names of converted modules
    for entry, rule in zip(entries, claims, strict=True):
        if any(_under(n, done) for n in entry.names for done in swapped):
            continue  # inside a module already converted (a block swapped whole)
        spec = rule.spec_for(entry.names[0], entry.module) if rule is not None else None
        conv = converter_for(entry.module, spec) if spec is not None else None
        if conv is not None and spec is not None and rule is not None:
            model, done = _convert(model, entry, rule.label, spec, conv)
            converted.append(done)
            swapped += entry.names
        elif _is_weight_layer(entry.module):
            kept.append(FloatLayer(entry.names[0], type(entry.module).__name__,
                                   _float_reason(entry.module, rule, spec)))
    log.debug("quantized %d layers, kept %d in float", len(converted), len(kept))
    return QuantizationReport(model, converted, kept)


def every_layer_rules(model: nn.Module, spec: Any) -> dict[type[nn.Module], Any]:
    """Rules that give every Conv2d and Linear of `model` the same `spec`, first and last
    layers included (only the types the model has, since a rule matching nothing is an error)."""
    present = {type(m) for m in model.modules()}
    return {kind: spec for kind in _default_types() if kind in present}


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
        if not isinstance(layer, QuantLayer):
            continue
        new: nn.Module = layer.to_float()
        if keep_act and layer.act_quant is not None:
            new = type(layer).from_float(new, None, layer.act_quant)
        for name in entry.names:
            model = _set_submodule(model, name, new)
    return model


def _entries(model: nn.Module) -> list[_Entry]:
    """Every module once, in named_modules order, with all of its names (shared modules)."""
    by_id: dict[int, _Entry] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        by_id.setdefault(id(module), _Entry(module, [])).names.append(name)
    return list(by_id.values())


def _normalize(spec: Any, label: str) -> LayerSpec | None:
    """Validate a rule's spec (building each quantizer once) and bring it to one form."""
    if spec is None:
        return None
    if isinstance(spec, str | Quantizer) or (isinstance(spec, Mapping) and "name" in spec):
        spec = {"weight": spec}
    if not isinstance(spec, Mapping) or not spec:
        raise LowbitError(f"rule {label}: spec must be {{'weight': q, 'act': q}}, a quantizer "
                          f"name/config/instance, a factory or None; got {spec!r}")
    options = {k: v for k, v in spec.items() if k not in ("weight", "act", "convert")}
    convert = spec.get("convert")
    if options and convert is None:
        close = difflib.get_close_matches(next(iter(options)), ["weight", "act", "convert"], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise LowbitError(f"rule {label}: unknown spec keys {sorted(options)} (a spec holds "
                          f"'weight', 'act', and 'convert' with that converter's options){hint}")
    if convert is not None:
        CONVERTERS.get(convert)  # an unknown converter fails now, naming the choices
    for part in (spec.get("weight"), spec.get("act")):
        _build(part, label)  # fail now, before any layer is touched
    out = LayerSpec(spec.get("weight"), spec.get("act"), convert, options)
    return None if out.weight is None and out.act is None and convert is None else out


def _compile_rules(rules: Mapping[Any, Any]) -> list[_Rule]:
    out = []
    for key, spec in rules.items():
        label = key.__name__ if isinstance(key, type) else f"'{key}'"  # no repr: no doubled \\
        layer_spec = spec if _is_factory(spec) else _normalize(spec, label)
        if isinstance(key, type) and issubclass(key, nn.Module):
            if (isinstance(layer_spec, LayerSpec) and layer_spec.convert is None
                    and not issubclass(key, _default_types())):
                raise LowbitError(f"rule {key.__name__}: unsupported layer type {key.__name__}; "
                                  f"no converter is registered for it (converters: "
                                  f"{', '.join(CONVERTERS.names())})")
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


def _is_factory(spec: Any) -> bool:
    return callable(spec) and not isinstance(spec, Quantizer | Mapping | str)


def _default_rules(entries: list[_Entry], spec: LayerSpec | None) -> list[_Rule]:
    if spec is None:
        raise LowbitError("nothing to quantize: give rules= or a weight=/act= quantizer spec")
    convs = [e.module for e in entries if isinstance(e.module, nn.Conv1d | nn.Conv2d)]
    linears = [e.module for e in entries if isinstance(e.module, nn.Linear)]
    if not convs and not linears:
        raise LowbitError("the model has no conv or linear layer to quantize")
    rules = []
    if convs:
        rules.append(_Rule("default: first conv", _object_matcher(convs[0]), None))
    rules.append(_Rule("default: last layer", _object_matcher((linears or convs)[-1]), None))
    for kind in (nn.Conv1d, nn.Conv2d, nn.Linear):
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
        if rule.spec is None or _is_factory(rule.spec) or any(_convertible(e, rule) for e in mine):
            continue
        # Converts nothing. Fine if earlier rules took its conv/linear layers (it is shadowed);
        # an error if it aims at weight layers lowbit cannot quantize, or at no layer at all.
        bad = [e for e in mine if _is_weight_layer(e.module)]
        if bad or not any(_convertible(e, rule) for e in matched):
            bad = bad or matched
            found = ", ".join(sorted({type(e.module).__name__ for e in bad}))
            raise LowbitError(f"rule {rule.label}: unsupported layer type {found} (matched "
                              f"{', '.join(repr(e.names[0]) for e in bad[:4])}); no converter "
                              f"is registered for it (converters: "
                              f"{', '.join(CONVERTERS.names())}): match other layers by name")


def _convertible(entry: _Entry, rule: _Rule) -> bool:
    spec = rule.spec if isinstance(rule.spec, LayerSpec) else None
    return converter_for(entry.module, spec) is not None


def _under(name: str, parent: str) -> bool:
    """`name` is a strict descendant of module `parent` ('' is the root)."""
    return name != parent and (parent == "" or name.startswith(parent + "."))


def _convert(model: nn.Module, entry: _Entry, label: str, spec: LayerSpec,
             conv: Converter) -> tuple[nn.Module, ConvertedLayer]:
    try:
        new = conv.build(entry.module, spec)
    except (ValueError, TypeError) as exc:
        raise LowbitError(f"rule {label}: converter {conv.name} at {entry.names[0]!r}: "
                          f"{exc}") from exc
    for name in entry.names:  # a shared module becomes one shared quantized module
        model = _set_submodule(model, name, new)
    wq, aq = _build(spec.weight, label), _build(spec.act, label)
    done = ConvertedLayer(entry.names[0], type(entry.module).__name__,
                          wq.to_config() if wq else None, aq.to_config() if aq else None,
                          label, entry.names[1:], conv.name)
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


def _float_reason(module: nn.Module, rule: _Rule | None, spec: LayerSpec | None) -> str:
    if isinstance(module, QuantLayer):
        return "already quantized (left as is)"
    if rule is None:
        return "no rule matched"
    if spec is None:
        return f"kept float by rule {rule.label}"
    return f"unsupported type {type(module).__name__}: no converter (rule {rule.label})"


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
