"""`lowbit study ...`: the equal-size bit-width study from the command line.

    lowbit study plan experiments/study/resnet20.yaml --dry-run     # runs, widths, sizes, MACs
    lowbit study plan experiments/study/resnet20.yaml --workers 2   # run (resumes, skips done)
    lowbit study plan X.yaml --executor ray --address auto          # each run a Ray task
    lowbit study report experiments/study/resnet20.yaml             # table.md + pareto.png
    lowbit study solve --model resnet20 --bits 1 --like-width 1 --like-bits 4

Heavy modules (torch) are imported when a verb runs, so `lowbit --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register `study` and its verbs on the main CLI's subparsers."""
    study = subparsers.add_parser("study", help="equal-size bit-width study (plan, report, solve)")
    verbs = study.add_subparsers(dest="study_verb", required=True, metavar="STUDY_VERB",
                                 help="plan | report | solve")
    p = verbs.add_parser("plan", help="expand a study plan; run it unless --dry-run")
    p.add_argument("plan", help="study plan YAML")
    p.add_argument("--dry-run", action="store_true", help="print every run and exit")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local processes (default), or Ray tasks (needs lowbit[ray])")
    p.add_argument("--workers", type=int, default=1, help="local: runs at once (processes)")
    p.add_argument("--address", help="ray: cluster address (default: a local instance)")
    p.add_argument("--cpus-per-task", type=float, default=1.0, help="ray: CPUs per run")
    p.add_argument("--data-dir", help="dataset root (default: $LOWBIT_DATA)")
    p = verbs.add_parser("report", help="table + Pareto plot from a plan's result files")
    p.add_argument("plan", help="study plan YAML")
    p.add_argument("--readme", help="also fill this file's study-table block")
    p = verbs.add_parser("solve", help="width multiplier for a bit-width at a target size")
    p.add_argument("--model", required=True, help="a zoo model (or module:callable) with width")
    p.add_argument("--bits", type=int, required=True, help="weight bits of the solved model")
    p.add_argument("--bytes", type=float, help="target size in bytes")
    p.add_argument("--like-model", help="target: this model's size (default: --model)")
    p.add_argument("--like-width", type=float, default=1.0,
                   help="target: the --like-model at this width")
    p.add_argument("--like-bits", type=int, help="target: the --like-model at these bits")
    p.add_argument("--first-last-bits", type=int, default=8,
                   help="bits of the first and last layers (not searched)")
    p.add_argument("--num-classes", type=int, default=10, help="classes of the model's head")
    study.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch a `lowbit study` verb; returns the exit code."""
    verb = {"plan": _plan, "report": _report, "solve": _solve}[args.study_verb]
    return verb(args)


def _plan(args: argparse.Namespace) -> int:
    from lowbit.data import ENV_DATA_DIR
    from lowbit.study.execute import make_executor, resolve_pending, run_plan
    from lowbit.study.plan import expand, format_runs, load_plan

    plan = load_plan(args.plan)
    print(f"plan {plan.name}: budgets " + ", ".join(
        f"{k} = {v:,.0f} B" for k, v in plan.budgets.items()))
    print(format_runs(resolve_pending(plan, expand(plan))))
    if args.dry_run:
        return 0
    if args.data_dir:
        os.environ[ENV_DATA_DIR] = args.data_dir  # inherited by worker processes
    executor = make_executor(args.executor, args.workers, args.address, args.cpus_per_task)
    results = run_plan(plan, executor)
    for r in results:
        print(f"{r['id']:<22} top1 {r['top1']:6.2f}%  {r['bytes']:>12,.0f} B")
    return 0


def _report(args: argparse.Namespace) -> int:
    from lowbit.study.plan import load_plan
    from lowbit.study.report import load_results, markdown, pareto_plot, update_readme

    plan = load_plan(args.plan)
    results = load_results(plan.results_dir)
    if not results:
        print(f"no results under {plan.results_dir}/runs yet")
        return 1
    table = markdown(results)
    (plan.results_dir / "table.md").write_text(table)
    png = pareto_plot(results, plan.results_dir / "pareto.png", f"{plan.name}: top-1 vs size")
    if args.readme:
        update_readme(args.readme, table, plan.name)
    print(table, end="")
    print(f"wrote {plan.results_dir / 'table.md'} and {png}")
    return 0


def _solve(args: argparse.Namespace) -> int:
    from lowbit.study.size import model_size
    from lowbit.study.solver import ZooFactory, solve_width

    factory = ZooFactory(args.model, args.num_classes)
    if args.bytes is None and args.like_bits is None:
        raise ValueError("give --bytes N or --like-bits B (with --like-width, --like-model)")
    target = args.bytes
    if target is None:
        like = ZooFactory(args.like_model or args.model, args.num_classes)
        target = model_size(like, args.like_width, args.like_bits, args.first_last_bits).total
    solved = solve_width(factory, args.bits, target, args.first_last_bits)
    print(json.dumps({"model": args.model, "bits": args.bits, "width": solved.width,
                      "bytes": solved.size.total, "target_bytes": target,
                      "error": solved.error, "step": solved.step,
                      "breakdown": solved.size.to_dict()}, indent=1))
    return 0
