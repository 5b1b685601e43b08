"""Relative training cost of every run of a study plan, to size its common schedule.

One SGD step (batch 128, 1 thread, bf16 autocast + channels_last, QAT weights as the plan sets
them) per run kind, all models in one process, rounds interleaved; the median step time of
each is divided by ResNet-20's at width 1 with 2-bit weights, the run the quoted CPU speed
(~53 s per epoch) refers to. Mixed runs (width known after their searches) are not measured.

    python benchmarks/bench_study_cost.py experiments/study/resnet20.yaml \\
        experiments/study/mobilenetv2.yaml --repeats 3

Writes benchmarks/results/study/step_cost.json (command, commit, date, machine, figures).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/bench_study_cost.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import RESULTS, interleaved, make_step, median, provenance, write_result
from lowbit.study.plan import expand, load_plan
from lowbit.study.size import full_table, quant_rules
from lowbit.study.solver import ZooFactory
from lowbit.transform import quantize_model

REFERENCE = "resnet20 w=1 bits=2"


def _models(plans: list[str]) -> dict[str, torch.nn.Module]:
    """One model per distinct (family, width, bits) of the plans' float and uniform runs."""
    ref = ZooFactory("resnet20")(1.0)
    models = {REFERENCE: quantize_model(ref, quant_rules(full_table(ref, 2))).model}
    for path in plans:
        plan = load_plan(path)
        for run in expand(plan):
            if run.width is None:
                continue
            key = f"{plan.factory.name} w={run.width:g} bits={run.bits or 'float'}"
            if key in models:
                continue
            model = plan.factory(run.width)
            if run.table is not None:
                model = quantize_model(model, quant_rules(run.table)).model
            models[key] = model
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plans", nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    prov = provenance("bench_study_cost.py", argv)
    steps = {k: make_step(m, bf16=True, batch=128, steps=1) for k, m in _models(args.plans).items()}
    times = interleaved(steps, args.repeats)
    base = median(times[REFERENCE])
    figures: dict[str, Any] = {k: {"step_s": round(median(v), 4),
                                   "relative": round(median(v) / base, 3)}
                               for k, v in times.items()}
    for key, row in figures.items():
        print(f"{key:<36} {row['step_s']:.3f} s/step  x{row['relative']:.2f}")
    if not args.no_write:
        write_result("step_cost", {"reference": REFERENCE, "threads": 1, "batch": 128,
                                   "bf16": True, "figures": figures}, RESULTS / "study", prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
