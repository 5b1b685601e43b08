"""`lowbit <verb>`: train, eval, models, datasets, demo, quantize, inspect, export, study.

User errors print one line (`lowbit: error: ...`) and exit with code 2; `--verbose` shows the
traceback too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from lowbit.errors import LowbitError

log = logging.getLogger("lowbit")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML recipe (defaults < --config < --set)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.epochs=10 (repeatable)",
    )
    p.add_argument("--data-dir", help="dataset root (default: $LOWBIT_DATA, else ./data)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def cmd_train(args: argparse.Namespace) -> int:
    from lowbit.config import build_config, load_yaml

    base = load_yaml(f"{args.resume}/config.yaml") if args.resume else None
    cfg = build_config(base=base, config_file=args.config, overrides=_overrides(args))
    return _train_or_print(cfg, args, resume=args.resume)


def _overrides(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + ([f"data.data_dir={args.data_dir}"] if args.data_dir else [])


def _train_or_print(cfg: Any, args: argparse.Namespace, resume: str | None = None) -> int:
    """`--dry-run`: print the resolved config; otherwise train and print the result."""
    import yaml

    from lowbit.api import train

    if args.dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    result = train(cfg, resume=resume, run_path=args.run_dir)
    top = f"test top1 {result['top1']:.2f}% top5 {result['top5']:.2f}%"
    print(json.dumps(result) if args.json else f"run {result['run_dir']}: {top}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from lowbit.api import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.data_dir)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['model']} on {result['dataset']} ({result['num_test']} test images): "
            f"top1 {result['top1']:.2f}%  top5 {result['top5']:.2f}%  loss {result['loss']:.4f}"
        )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from lowbit.models import list_models

    print("\n".join(list_models()))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from lowbit.data import list_datasets

    for name, text in list_datasets().items():
        print(f"{name:16s} {text}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from lowbit.config import build_config, load_yaml
    from lowbit.engine.checkpoint import load_checkpoint
    from lowbit.recipes import quant_section_for

    _, meta = load_checkpoint(args.source)
    base = dict(meta["config"])
    base.update(quant=quant_section_for(args.method, args.bits), name=None, expected=None)
    base["train"] = {**base["train"], "init": str(args.source)}
    if args.config:  # a recipe file refines the method's section and the schedule
        recipe = load_yaml(args.config)
        base["quant"] = {**base["quant"], **recipe.pop("quant", {})}
        base.update(recipe)
    return _train_or_print(build_config(base=base, overrides=_overrides(args)), args)


def cmd_inspect(args: argparse.Namespace) -> int:
    from lowbit.inspect import inspect_target

    report = inspect_target(args.target, hist_dir=args.hist)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        report.print()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lowbit.export import export_packed
    from lowbit.export.folded import export_folded

    if args.format == "onnx":
        from lowbit.api import load_model
        from lowbit.export.onnx import export_onnx

        model, meta = load_model(args.checkpoint)
        out = export_onnx(model, args.output or f"{args.checkpoint}.{args.flavour}.onnx",
                          args.flavour, meta)
    elif args.fold_bn:
        out = export_folded(args.checkpoint, args.output or f"{args.checkpoint}.folded.safetensors")
    else:
        out = export_packed(args.checkpoint, args.output or f"{args.checkpoint}.lowbit")
    size = out.stat().st_size
    print(
        json.dumps({"output": str(out), "bytes": size})
        if args.json
        else f"wrote {out} ({size / 1024:.1f} KiB)"
    )
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from lowbit.reproduce import reproduce

    result = reproduce(
        args.experiment,
        args.run_dir,
        args.data_dir,
        resume=args.resume,
        record_only=args.record_only,
        results_dir=args.results_dir,
        checkpoints_dir=args.checkpoints_dir,
    )
    if args.json:
        print(json.dumps(result))
    else:
        verdict = {True: "PASS", False: "MISS", None: "recorded"}[result["passed"]]
        print(
            f"{args.experiment}: top1 {result['top1']:.2f}% (threshold {result['threshold']}) "
            f"{verdict}; {result['checkpoint']}"
        )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from lowbit.study import run_sweep

    overrides = _overrides(args)
    summary = run_sweep(args.config, args.param, args.values, overrides, args.out)
    if args.json:
        print(json.dumps(summary))
    else:
        for row in summary["rows"]:
            print(
                f"{args.param}={row['value']}: val top1 {row['val_top1']:.2f}%  "
                f"test top1 {row['test_top1']:.2f}%"
            )
        print(f"best {args.param} = {summary['best_value']} (by validation top-1)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lowbit.demo import run_demo

    run_demo(epochs=args.epochs, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logs and tracebacks")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("train", help="train (float or with a quant: section)")
    _add_config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--run-dir", help="where to write the run (default: out_dir/name)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its dataset's full test set")
    p.add_argument("checkpoint")
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_eval)

    sub.add_parser("models", help="list registered models").set_defaults(fn=cmd_models)
    sub.add_parser("datasets", help="list datasets").set_defaults(fn=cmd_datasets)

    p = sub.add_parser("quantize", help="fine-tune a trained checkpoint with a low-bit method")
    _add_config_args(p)
    p.add_argument("--method", required=True, help="a registered recipe: qat, inq, lbw, gdrq")
    p.add_argument("--bits", type=int, required=True, help="weight bits")
    p.add_argument("--from", dest="source", required=True, metavar="CHECKPOINT")
    p.add_argument("--run-dir", help="where to write the run")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_quantize)

    p = sub.add_parser("inspect", help="per-layer bits, bytes, MACs, BOPs, codebook compliance")
    p.add_argument("target", metavar="CHECKPOINT_OR_RECIPE")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--hist",
        metavar="DIR",
        help="also draw each layer's weight and input histograms (before/after clip, levels "
        "marked) as PNGs into DIR",
    )
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("export", help="write the bit-packed deployable artifact (.lowbit)")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output")
    p.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold quantization scales into BN (integer weights x per-channel affine); "
        "writes a folded model that `lowbit eval` loads",
    )
    p.add_argument("--format", choices=["lowbit", "onnx"], default="lowbit",
                   help="onnx: an ONNX graph for onnxruntime (needs the lowbit[onnx] extra)")
    p.add_argument("--flavour", choices=["float", "int"], default="int",
                   help="ONNX flavour: float weights, or int8 codes with QDQ activations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("reproduce", help="run an experiments/*.yaml row and record the result")
    p.add_argument("experiment")
    p.add_argument("--data-dir")
    p.add_argument("--run-dir", help="run directory (default: out_dir/<experiment name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--record-only", action="store_true", help="record a finished run, no training")
    p.add_argument("--results-dir", default="benchmarks/results")
    p.add_argument("--checkpoints-dir", default="benchmarks/checkpoints")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_reproduce)

    p = sub.add_parser("sweep", help="one run per value of a config key, best by validation")
    _add_config_args(p)
    p.add_argument("--param", required=True, help="dotted config key, e.g. quant.r")
    p.add_argument("--values", nargs="+", required=True)
    p.add_argument("--out", default="runs/sweep", help="folder for the runs and sweep.json")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("demo", help="embedded end-to-end demo (digits, no downloads)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    fn: Callable[[argparse.Namespace], Any] = args.fn
    try:
        return int(fn(args) or 0)
    except (LowbitError, ValueError, TypeError, OSError, FloatingPointError) as exc:
        if args.verbose:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"lowbit: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lowbit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
