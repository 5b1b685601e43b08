"""Study plans: one YAML -> the list of runs, each with its width, exact size, MACs and BOPs.

    name: resnet20_cifar10
    family: {model: resnet20, kwargs: {}}       # a zoo model that takes `width`
    first_last_bits: 8                          # first conv and last linear layer (32 = float)
    bits: [1, 2, 4, 8]                          # one uniform weight bit-width per run
    budgets:                                    # target sizes: bytes, or a model's size
      - {name: b2, like: {width: 1.0, bits: 2}}     # (like.model defaults to the family)
      - {name: b1, like: {width: 1.0, bits: 1}, seeds: [0, 1]}
    seeds: [0]                                  # default seeds of every budget
    baselines:                                  # mixed precision (lowbit.study.mixed)
      greedy: {tolerance: 0.5, finetune_steps: 50, reference: start}   # or reference: float
      knapsack: {anchor_bits: 4}
    search_width: 1.0                           # width of the float model the searches use
    schedule: {data: {...}, train: {...}, optim: {...}, schedule: {...}}   # shared by all

Runs: `float-s{seed}` (the float reference at `search_width`, also what the mixed searches
start from), `{budget}-w{bits}-s{seed}` and `{budget}-{greedy|knapsack}-s{seed}`. The width of
a mixed run is known once its search has run (`lowbit.study.mixed`).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lowbit.config import load_yaml
from lowbit.data import DATASET_INFO, input_shape_for
from lowbit.schema import ConfigError
from lowbit.study.mixed import GreedySettings
from lowbit.study.size import Bits, build_meta, full_table, layer_macs, model_size, table_size
from lowbit.study.solver import SolvedWidth, ZooFactory, solve_width

BASELINES = ("greedy", "knapsack")
BASELINE_KEYS = {"greedy": {f.name for f in fields(GreedySettings)},
                 "knapsack": {"anchor_bits", "eval_images", "bf16"}}
_KEYS = {"name", "family", "first_last_bits", "bits", "budgets", "seeds", "baselines",
         "search_width", "schedule", "runs_dir", "results_dir"}


@dataclass
class Plan:
    """A parsed study plan (see module doc); `raw` is the YAML mapping."""

    raw: dict[str, Any]
    factory: ZooFactory
    input_shape: tuple[int, ...]
    budgets: dict[str, float]

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def first_last_bits(self) -> int:
        return int(self.raw.get("first_last_bits", 8))

    @property
    def runs_dir(self) -> Path:
        return Path(self.raw.get("runs_dir") or f"runs/study/{self.name}")

    @property
    def results_dir(self) -> Path:
        return Path(self.raw.get("results_dir") or f"benchmarks/results/study/{self.name}")

    def baseline(self, kind: str) -> dict[str, Any] | None:
        """The settings of baseline `kind` (None if the plan has none); the greedy search's
        with every default filled in, so a result made under other defaults is not reused."""
        value = (self.raw.get("baselines") or {}).get(kind)
        if value is None:
            return None
        return asdict(GreedySettings(**value)) if kind == "greedy" else dict(value)

    def seeds(self, budget: str | None = None) -> list[int]:
        for spec in self.raw["budgets"]:
            if spec["name"] == budget and "seeds" in spec:
                return [int(s) for s in spec["seeds"]]
        return [int(s) for s in self.raw.get("seeds", [0])]


@dataclass
class Run:
    """One training run of a plan; `width`, `size`, `table` are None while a search is pending."""

    id: str
    kind: str  # "float", "uniform", "greedy" or "knapsack"
    seed: int
    budget: str | None = None
    target: float | None = None
    bits: int | None = None
    width: float | None = None
    table: dict[str, int] | None = None
    size: float | None = None
    macs: int | None = None
    bops: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size_error(self) -> float | None:
        if self.size is None or self.target is None:
            return None
        return (self.size - self.target) / self.target


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan YAML; every budget is resolved to bytes."""
    return parse_plan(load_yaml(path))


def parse_plan(raw: dict[str, Any]) -> Plan:
    """Check a plan mapping (see module doc) and resolve its budgets to bytes."""
    unknown = set(raw) - _KEYS
    if unknown:
        raise ConfigError(f"unknown plan key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    for key in ("name", "family", "bits", "budgets", "schedule"):
        if key not in raw:
            raise ConfigError(f"the plan needs a '{key}:' entry")
    for kind, settings in (raw.get("baselines") or {}).items():
        if kind not in BASELINES:
            raise ConfigError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")
        if not isinstance(settings, dict | None):
            raise ConfigError(f"baselines.{kind}: give a mapping of settings, got {settings!r}")
        extra = set(settings or {}) - BASELINE_KEYS[kind]
        if extra:
            raise ConfigError(f"unknown {kind} setting(s) {sorted(extra)}; known: "
                              f"{sorted(BASELINE_KEYS[kind])}")
        if kind == "greedy":
            try:
                GreedySettings(**(settings or {}))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"baselines.greedy: {exc}") from exc
    dataset = str(raw["schedule"].get("data", {}).get("name", "cifar10"))
    in_ch, _, classes = DATASET_INFO.get(dataset, (3, 32, 10))
    family = raw["family"]
    factory = ZooFactory(str(family["model"]), classes, in_ch,
                         tuple(sorted((family.get("kwargs") or {}).items())))
    plan = Plan(raw, factory, (1, *input_shape_for(dataset)), {})
    for spec in raw["budgets"]:
        plan.budgets[str(spec["name"])] = _budget_bytes(plan, spec)
    return plan


def _budget_bytes(plan: Plan, spec: dict[str, Any]) -> float:
    if "bytes" in spec:
        return float(spec["bytes"])
    like = spec.get("like")
    if not isinstance(like, dict) or "bits" not in like:
        raise ConfigError(f"budget {spec.get('name')}: give bytes: N or like: {{width, bits}}")
    factory = plan.factory
    if "model" in like:
        factory = ZooFactory(str(like["model"]), factory.num_classes, factory.in_channels)
    return model_size(factory, float(like.get("width", 1.0)), int(like["bits"]),
                      plan.first_last_bits).total


def expand(plan: Plan) -> list[Run]:
    """Every run of the plan, uniform and float ones with width, size, MACs and BOPs solved."""
    runs: list[Run] = []
    seeds = sorted({s for b in plan.budgets for s in plan.seeds(b)})
    search_width = float(plan.raw.get("search_width", 1.0))
    for seed in seeds:
        runs.append(describe(plan, Run(f"float-s{seed}", "float", seed, width=search_width)))
    for budget, target in plan.budgets.items():
        for seed in plan.seeds(budget):
            for bits in plan.raw["bits"]:
                solved = _solve(plan.factory, int(bits), target, plan.first_last_bits)
                run = Run(f"{budget}-w{bits}-s{seed}", "uniform", seed, budget, target,
                          int(bits), solved.width, extra={"solver_step": solved.step})
                runs.append(describe(plan, run))
            for kind in BASELINES:
                if plan.baseline(kind) is not None:
                    runs.append(Run(f"{budget}-{kind}-s{seed}", kind, seed, budget, target))
    return runs


@functools.lru_cache(maxsize=256)
def _solve(factory: ZooFactory, bits: int, target: float, first_last: int) -> SolvedWidth:
    return solve_width(factory, bits, target, first_last)


def describe(plan: Plan, run: Run, bits: Bits | None = None) -> Run:
    """Fill `run.table`, `size`, `macs`, `bops` from its width and bits (float: 32 everywhere)."""
    assert run.width is not None
    model = build_meta(plan.factory, run.width)
    if bits is None:
        bits = 32 if run.bits is None else run.bits
    first_last = 32 if run.kind == "float" else plan.first_last_bits
    table = full_table(model, bits, first_last)
    macs = layer_macs(model, plan.input_shape)
    run.table = None if run.kind == "float" else table
    run.size = table_size(model, table).total
    run.macs = sum(macs.values())
    run.bops = sum(m * table[name] * 32 for name, m in macs.items())  # activations float
    return run


def format_runs(runs: list[Run]) -> str:
    """The dry-run table: one line per run."""
    head = (f"{'run':<22} {'kind':<9} {'bits':>4} {'width':>8} {'size (B)':>11} "
            f"{'vs target':>9} {'MACs':>13} {'BOPs':>16}")
    lines = [head, "-" * len(head)]
    for r in runs:
        pending = r.width is None
        err = "" if r.size_error is None else f"{r.size_error:+.2%}"
        lines.append(
            f"{r.id:<22} {r.kind:<9} {'' if r.bits is None else r.bits:>4} "
            f"{'search' if pending else f'{r.width:g}':>8} "
            f"{'~' + f'{r.target:,.0f}' if pending and r.target else f'{r.size or 0:,.0f}':>11} "
            f"{err:>9} {'' if r.macs is None else f'{r.macs:,}':>13} "
            f"{'' if r.bops is None else f'{r.bops:,}':>16}")
    return "\n".join(lines)
