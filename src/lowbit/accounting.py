"""What a (quantized or float) model costs, and whether its weights obey their codebooks.

`cost_report(model, input_shape)` gives one row per layer and the model totals:

- compute rows, one per Conv2d / Linear (quantized or not; a shared layer is one row):
  `params` = weight + bias elements; `weight_bits` = `weight_quant.bits` (32 if float);
  `act_bits` = `act_quant.bits` (32 if float input);
  `bytes` = weight elements * weight_bits / 8 + 4 bytes for each bias element, each weight scale
  (the `scale` tensor of `weight_quant.encode(W)`; none if float) and each parameter or float
  buffer of the activation quantizer (its step / clip values);
  `macs` = multiply-accumulates per sample, measured by forward hooks on one forward pass of a
  seeded random input of `input_shape` (divided by its batch size, dim 0): a conv counts
  out_elements * in_channels / groups * kh * kw, a linear out_elements * in_features; bias adds,
  norms, activations and pooling count 0, and a layer called twice counts twice;
  `bops` = macs * weight_bits * act_bits (the binary-operations convention of the low-bit
  literature: a b_w x b_a-bit MAC costs b_w * b_a bit operations);
  `distinct` / `sparsity` = number of distinct values / fraction of zeros of the quantized weight.
- other rows, one per module owning parameters or float buffers itself (BatchNorm, PReLU, ...,
  and `QuantAct`'s quantizer): every parameter and persistent float buffer (BN running mean and
  var included, integer counters not) at 32 bits.

- aggregation rows, one per multi-branch module (a module with `num_branches` and
  `aggregation_macs(x, y)`, e.g. Group-Net's `BranchSum`): its lambda (and gate) parameters at
  32 bits and, as `macs`, the float multiply-accumulates that sum its K branches.
- `branches` on every row: how many copies of the parent network's layer it is one of (the
  product of the K of the multi-branch modules around it; 1 outside them). A row's
  `float_bytes` is its share of the float parent (its 32-bit size / branches), so `compression`
  of an expanded network compares it with the float network it was built from.

Complexity against float (Group-Net Eq. 4, XNOR-Net's convention): a row costs `ops` = macs
float operations if both its weights and inputs are 32-bit, else bops / 64 (a 64-bit XNOR +
popcount does 64 binary multiply-accumulates in one float operation's time; a b_w x b_a-bit MAC
is b_w * b_a of them). `float_ops` is the MACs of the float parent network (each row's macs
divided by its `branches`; aggregation rows excluded) and `speedup` = float_ops / ops.

`float_bytes` counts the same model with every parameter and buffer at 32 bits and no quantizer
state; `compression` = float_bytes / bytes (1.0 for a float model). Sizes are exact bit counts / 8,
without the per-tensor padding a packed file may add.

`check_compliance(model)` checks that every quantized weight lies in its layer's declared level
set `weight_quant.levels(W)` up to a float32 rounding tolerance.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import torch
from rich.table import Table
from torch import nn

from lowbit.nn.layers import QuantAct
from lowbit.quant.base import Quantizer

_FLOAT_BITS = 32
_BINARY_OPS_PER_FLOAT_OP = 64


@dataclass
class LayerCost:
    """One row of a cost report; act_bits, distinct and sparsity are None on non-compute rows."""

    name: str
    type: str
    params: int
    weight_bits: int
    act_bits: int | None
    bytes: float
    float_bytes: float
    macs: int
    bops: int
    distinct: int | None
    sparsity: float | None
    branches: int = 1

    @property
    def ops(self) -> float:
        """Float-operation equivalents: macs if fully float, else bops / 64."""
        if self.weight_bits >= _FLOAT_BITS and (self.act_bits or _FLOAT_BITS) >= _FLOAT_BITS:
            return float(self.macs)
        return self.bops / _BINARY_OPS_PER_FLOAT_OP


@dataclass
class CostReport:
    """Per-layer costs and model totals for one input shape."""

    input_shape: tuple[int, ...]
    layers: list[LayerCost]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def bytes(self) -> float:
        return sum(r.bytes for r in self.layers)

    @property
    def float_bytes(self) -> float:
        return sum(r.float_bytes for r in self.layers)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.layers)

    @property
    def bops(self) -> int:
        return sum(r.bops for r in self.layers)

    @property
    def compression(self) -> float:
        """float_bytes / bytes."""
        return self.float_bytes / self.bytes if self.bytes else 1.0

    @property
    def ops(self) -> float:
        """Float-operation equivalents of one forward pass (see module doc)."""
        return sum(r.ops for r in self.layers)

    @property
    def float_ops(self) -> float:
        """MACs of the float parent network: compute rows' macs / branches."""
        exact = sum(Fraction(r.macs, r.branches) for r in self.layers if r.act_bits is not None)
        return float(exact)

    @property
    def speedup(self) -> float:
        """float_ops / ops (1.0 for a float model)."""
        return self.float_ops / self.ops if self.ops else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the rows plus a `totals` entry."""
        totals = {k: getattr(self, k) for k in ("params", "bytes", "float_bytes", "macs", "bops",
                                                "compression", "ops", "float_ops", "speedup")}
        return {"input_shape": list(self.input_shape), "layers": [asdict(r) for r in self.layers],
                "totals": totals}


@dataclass
class LayerCompliance:
    """Whether one layer's quantized weight lies in its level set."""

    name: str
    type: str
    passed: bool
    max_deviation: float
    tolerance: float
    num_levels: int
    num_off: int


@dataclass
class ComplianceResult:
    """Codebook compliance of every quantized layer; `passed` when all of them pass."""

    layers: list[LayerCompliance]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "layers": [asdict(r) for r in self.layers]}


def cost_report(model: nn.Module, input_shape: Sequence[int]) -> CostReport:
    """Measure params, bits, bytes, MACs and BOPs of `model` per layer (see module doc).

    Args:
        model: a float or quantized model; left unchanged: everything runs on a deep copy in
            eval mode, so no BN statistic, lazy parameter or quantizer init (LSQ step) moves.
        input_shape: shape of one input batch including the batch dim, e.g. (1, 3, 32, 32).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"input_shape must be (batch, ...) with positive sizes, got {shape}")
    model = copy.deepcopy(model)
    macs = _measure_macs(model, shape)
    multiplicity = _branch_multiplicity(model)
    rows = []
    for names, module in _unique_modules(model):
        row: LayerCost | None
        if isinstance(module, nn.Conv2d | nn.Linear):
            row = _compute_row(names, module, macs.get(id(module), 0) // shape[0])
        elif not isinstance(module, Quantizer):
            row = _other_row(names, module, macs.get(id(module), 0) // shape[0])
        else:
            continue
        if row is not None:
            row.branches = multiplicity.get(id(module), 1)
            row.float_bytes /= row.branches  # the float parent holds one copy, not K
            rows.append(row)
    return CostReport(shape, rows)


def check_compliance(model: nn.Module, rtol: float = 1e-5) -> ComplianceResult:
    """Check every quantized weight against `weight_quant.levels(W)`.

    A weight passes if it is within `rtol * max|level|` of some level: float32 maths (scale
    products, per-channel broadcasting) may move an exact level by a few ulps, never by more.
    Layers are those with a `weight_quant` Quantizer and a `quantized_weight()` method. Runs on
    a deep copy in eval mode (the deployed state), so quantizers that initialise on first use
    (LSQ) or track statistics (EMA clips) leave `model` unchanged.
    """
    model, out = copy.deepcopy(model).eval(), []
    for names, module in _unique_modules(model):
        quantizer = getattr(module, "weight_quant", None)
        quantized_weight = getattr(module, "quantized_weight", None)
        if isinstance(quantizer, Quantizer) and callable(quantized_weight):
            with torch.no_grad():
                weight = quantized_weight()  # first: levels() reads state forward() may set
                levels = quantizer.levels(getattr(module, "weight")).detach()  # noqa: B009
                dev = _deviation(weight, levels)
            tol = rtol * max(levels.abs().max().item(), torch.finfo(torch.float32).tiny)
            out.append(LayerCompliance(names[0], type(module).__name__, bool((dev <= tol).all()),
                                       dev.max().item(), tol, levels.shape[-1],
                                       int((dev > tol).sum())))
    return ComplianceResult(out)


NARROW = 120  # below this many columns the tables drop their less essential columns


def render_table(report: CostReport | ComplianceResult, width: int = 140) -> Table:
    """A rich Table of a cost report (with a totals row) or of a compliance result; for a
    console narrower than NARROW columns, fewer columns (none is cut)."""
    narrow = width < NARROW
    if isinstance(report, ComplianceResult):
        return _compliance_table(report, narrow)
    multi = any(r.branches > 1 for r in report.layers)
    if narrow:
        return _narrow_cost_table(report, multi)
    table = Table("layer", "type", "params", "w bits", "a bits", "bytes", "MACs", "BOPs",
                  "distinct", "sparsity", *(["K"] if multi else []),
                  title=f"cost at input {report.input_shape}")
    for r in report.layers:
        table.add_row(r.name, r.type, f"{r.params:,}", str(r.weight_bits), _opt(r.act_bits),
                      f"{r.bytes:,.1f}", f"{r.macs:,}", f"{r.bops:,}", _opt(r.distinct),
                      "-" if r.sparsity is None else f"{r.sparsity:.1%}",
                      *([str(r.branches)] if multi else []))
    table.add_section()
    table.add_row("total", f"{report.compression:.2f}x smaller", f"{report.params:,}", "", "",
                  f"{report.bytes:,.1f}", f"{report.macs:,}", f"{report.bops:,}", "", "")
    table.add_row("ops", f"{report.speedup:.2f}x speed-up", "", "", "", "",
                  f"{report.ops:,.0f}", f"float {report.float_ops:,.0f}", "", "")
    return table


def _narrow_cost_table(report: CostReport, multi: bool) -> Table:
    """Layer, w/a bits, KiB, MMACs, sparsity (and K): what fits 80 columns."""
    table = Table("layer", "w/a", "KiB", "MMACs", "sparse", *(["K"] if multi else []),
                  title=f"cost at input {report.input_shape}")
    for r in report.layers:
        table.add_row(r.name, f"{r.weight_bits}/{_opt(r.act_bits)}", f"{r.bytes / 1024:.2f}",
                      f"{r.macs / 1e6:.2f}", "-" if r.sparsity is None else f"{r.sparsity:.0%}",
                      *([str(r.branches)] if multi else []))
    table.add_section()
    table.add_row("total", f"{report.compression:.1f}x", f"{report.bytes / 1024:.1f}",
                  f"{report.macs / 1e6:.2f}", f"{report.speedup:.1f}x op")
    return table


def _compliance_table(report: ComplianceResult, narrow: bool) -> Table:
    heads = ["layer", "pass", "max dev", "levels", "off"] if narrow else [
        "layer", "type", "pass", "max dev", "tol", "levels", "off"]
    table = Table(*heads, title=f"codebook compliance: {'PASS' if report.passed else 'FAIL'}")
    for c in report.layers:
        cells = {"layer": c.name, "type": c.type, "pass": "yes" if c.passed else "NO",
                 "max dev": f"{c.max_deviation:.3g}", "tol": f"{c.tolerance:.3g}",
                 "levels": str(c.num_levels), "off": str(c.num_off)}
        table.add_row(*(cells[h] for h in heads))
    return table


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


def _unique_modules(model: nn.Module) -> list[tuple[list[str], nn.Module]]:
    """Each module once (named_modules order) with all its names, so shared layers count once."""
    by_id: dict[int, tuple[list[str], nn.Module]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        by_id.setdefault(id(module), ([], module))[0].append(name or "(model)")
    return list(by_id.values())


def _measure_macs(model: nn.Module, shape: tuple[int, ...]) -> dict[int, int]:
    """MACs for the whole batch per compute-layer object, from one forward pass."""
    counts: dict[int, int] = {}

    def hook(module: nn.Module, inp: Any, out: torch.Tensor) -> None:
        counts[id(module)] = counts.get(id(module), 0) + _macs(module, inp, out)

    layers = {id(m): m for m in model.modules()
              if isinstance(m, nn.Conv2d | nn.Linear) or _is_multibranch(m)}
    handles = [m.register_forward_hook(hook) for m in layers.values()]
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    # Seeded generator: a fixed input without touching the global RNG. Eval mode: batch
    # statistics of a batch of 1 would fail in BN, and EMA clips should not move.
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    try:
        with torch.no_grad():
            model.eval()(x)
    except RuntimeError as exc:
        raise ValueError(f"the model cannot run on an input of shape {shape}: {exc}") from exc
    for h in handles:
        h.remove()
    return counts


def _is_multibranch(module: nn.Module) -> bool:
    return hasattr(module, "num_branches") and callable(getattr(module, "aggregation_macs", None))


def _branch_multiplicity(model: nn.Module) -> dict[int, int]:
    """id(module) -> product of the K of the multi-branch modules that contain it."""
    out: dict[int, int] = {}

    def walk(module: nn.Module, k: int) -> None:
        out.setdefault(id(module), k)
        inner = k * int(getattr(module, "num_branches", 1)) if _is_multibranch(module) else k
        for child in module.children():
            walk(child, inner)

    walk(model, 1)
    return out


def _macs(module: nn.Module, inp: Any, out: torch.Tensor) -> int:
    if _is_multibranch(module):
        return int(module.aggregation_macs(inp[0], out))  # type: ignore[operator]
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    assert isinstance(module, nn.Linear)
    return out.numel() * module.in_features


def _compute_row(names: list[str], layer: nn.Conv2d | nn.Linear, macs: int) -> LayerCost:
    wq, aq = getattr(layer, "weight_quant", None), getattr(layer, "act_quant", None)
    w_bits = wq.bits if isinstance(wq, Quantizer) else _FLOAT_BITS
    a_bits = aq.bits if isinstance(aq, Quantizer) else _FLOAT_BITS
    with torch.no_grad():
        quantized_weight = getattr(layer, "quantized_weight", None)
        w = quantized_weight() if callable(quantized_weight) else layer.weight
        scales = wq.encode(layer.weight)[1].numel() if isinstance(wq, Quantizer) else 0
    bias = layer.bias.numel() if layer.bias is not None else 0
    extra = bias + scales + (_stored_numel(aq) if isinstance(aq, Quantizer) else 0)
    params = layer.weight.numel() + bias
    return LayerCost(", ".join(names), type(layer).__name__, params, w_bits, a_bits,
                     layer.weight.numel() * w_bits / 8 + extra * _FLOAT_BITS / 8,
                     params * _FLOAT_BITS / 8, macs, macs * w_bits * a_bits,
                     int(torch.unique(w).numel()), float((w == 0).float().mean()))


def _other_row(names: list[str], module: nn.Module, macs: int = 0) -> LayerCost | None:
    params = sum(p.numel() for p in module.parameters(recurse=False))
    stored = _stored_numel(module)
    float_stored = stored
    if isinstance(module, QuantAct):
        # Its quantizer's step/clip values exist only in the quantized model.
        stored, float_stored = stored + _stored_numel(module.act_quant), 0
    if stored == 0 and float_stored == 0:
        return None
    if _is_multibranch(module):  # lambda / gates exist only in the expanded model
        float_stored = 0
    return LayerCost(", ".join(names), type(module).__name__, params, _FLOAT_BITS, None,
                     stored * _FLOAT_BITS / 8, float_stored * _FLOAT_BITS / 8, macs,
                     macs * _FLOAT_BITS * _FLOAT_BITS, None, None)


def _stored_numel(module: nn.Module) -> int:
    """Elements of the module's own parameters and persistent float buffers (not children's)."""
    own = {k: v for k, v in module.state_dict(keep_vars=True).items() if "." not in k}
    return sum(v.numel() for v in own.values() if v.is_floating_point())


def _deviation(w: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Distance from each weight to its nearest level (levels 1-d, or (C, L) per channel)."""
    lv = levels.to(w.dtype).sort(dim=-1).values.contiguous()
    if lv.dim() == 2:
        if lv.shape[0] != w.shape[0]:
            raise ValueError(f"per-channel levels for {lv.shape[0]} channels, weight has "
                             f"{w.shape[0]}")
        vals = w.reshape(lv.shape[0], -1).contiguous()
    else:
        vals = w.reshape(-1)
    idx = torch.searchsorted(lv, vals)
    lo = lv.gather(-1, (idx - 1).clamp(min=0))
    hi = lv.gather(-1, idx.clamp(max=lv.shape[-1] - 1))
    return torch.minimum((vals - lo).abs(), (vals - hi).abs())
