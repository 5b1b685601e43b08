"""`lowbit <verb>`: the command-line tool (`lowbit --help` lists the verbs).

User errors print one line (`lowbit: error: ...`) and exit with code 2; `--verbose` shows the
traceback too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lowbit import __version__
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


def _without_nproc(argv: list[str]) -> list[str]:
    """`argv` less its `--nproc N` / `--nproc=N` (each rank is one process)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="MODULE:CALLABLE",
                   help="trust the user model builder the file names (lowbit imports no code a "
                   "file names unless told to)")


def cmd_train(args: argparse.Namespace) -> int:
    from lowbit.build import load_run
    from lowbit.config import load_yaml
    from lowbit.engine.launch import launch

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch(args.nproc, _without_nproc(args.argv))

    if args.resume and not Path(args.resume, "config.yaml").is_file():
        raise LowbitError(f"{args.resume} is not a run directory (no config.yaml): "
                          "--resume takes the folder of a run lowbit started")
    base = load_yaml(f"{args.resume}/config.yaml") if args.resume else None
    run = load_run(base=base, config_file=args.config, overrides=_overrides(args))
    return _train_or_print(run, args, resume=args.resume)


def _overrides(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + ([f"data.data_dir={args.data_dir}"] if args.data_dir else [])


def _train_or_print(run: Any, args: argparse.Namespace, resume: str | None = None) -> int:
    """`--dry-run`: print the resolved config; otherwise train and print the result."""
    import yaml

    from lowbit.api import train

    if args.dry_run:
        print(yaml.safe_dump(run.cfg.to_dict(), sort_keys=False), end="")
        return 0
    result = train(run, resume=resume, run_path=args.run_dir)
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


def cmd_methods(args: argparse.Namespace) -> int:
    from lowbit.recipes import RECIPES

    for name in RECIPES.names():
        doc = (RECIPES.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:10s} {doc[0] if doc else ''}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from lowbit.data import list_datasets

    for name, text in list_datasets().items():
        print(f"{name:16s} {text}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from lowbit.build import load_run
    from lowbit.config import load_yaml, set_dotted
    from lowbit.engine.checkpoint import load_checkpoint
    from lowbit.recipes import RECIPES, method_bits

    _, meta = load_checkpoint(args.source)
    base = dict(meta["config"])
    base.update(quant={"method": args.method}, name=None, expected=None)
    base["train"] = {**base["train"], "init": str(args.source), "epochs": None}
    for key, value in RECIPES.get(args.method, "method").finetune.items():  # fine-tune defaults
        base[key] = {**base.get(key, {}), **value}
    if args.config:  # a recipe file refines the method's section and the schedule
        recipe = load_yaml(args.config)
        file_init = (recipe.get("train") or {}).get("init")
        if file_init is not None and Path(file_init).resolve() != Path(args.source).resolve():
            raise LowbitError(f"--from {args.source} disagrees with {args.config}, which sets "
                              f"train.init={file_init}: give one of them")
        base["quant"] = {**base["quant"], **recipe.pop("quant", {})}
        for key, value in recipe.items():  # a section merges key by key: train.init stays
            both = isinstance(value, dict) and isinstance(base.get(key), dict)
            base[key] = {**base[key], **value} if both else value
        file_bits = method_bits(base["quant"])
        if file_bits is not None and file_bits != args.bits:
            raise LowbitError(f"--bits {args.bits} disagrees with {args.config}, which sets "
                              f"quant.weight.bits={file_bits}: give one of them")
    set_dotted(base, "quant.weight.bits", args.bits)
    return _train_or_print(load_run(base=base, overrides=_overrides(args)), args)


def cmd_inspect(args: argparse.Namespace) -> int:
    from lowbit.tools.inspection import inspect_target

    report = inspect_target(args.target, hist_dir=args.hist)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        report.print()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lowbit.artifacts import export_file, load_model

    if args.format == "onnx":
        try:
            from lowbit.export.onnx import export_onnx
        except ImportError as exc:
            raise LowbitError("--format onnx needs the optional extra (pip install "
                              f'"lowbit[onnx]"): {exc}') from None
        model, meta = load_model(args.checkpoint)
        out = export_onnx(model, args.output or f"{args.checkpoint}.{args.flavour}.onnx",
                          args.flavour, meta)
    elif args.fold_bn:
        out = export_file(args.checkpoint, args.output or f"{args.checkpoint}.folded.safetensors",
                          "folded")
    else:
        out = export_file(args.checkpoint, args.output or f"{args.checkpoint}.lowbit", "packed")
    size = out.stat().st_size
    print(
        json.dumps({"output": str(out), "bytes": size})
        if args.json
        else f"wrote {out} ({size / 1024:.1f} KiB)"
    )
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from lowbit.tools.reproduce import reproduce

    run_dir = Path(args.run_dir or Path("runs") / Path(args.experiment).stem)
    scratch = not args.record  # results stay in the run directory unless asked to record
    result = reproduce(
        args.experiment,
        run_dir,
        args.data_dir,
        resume=args.resume,
        record_only=args.record_only,
        results_dir=run_dir if scratch else args.results_dir,
        checkpoints_dir=run_dir if scratch else args.checkpoints_dir,
        overrides=list(args.overrides),
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
    from lowbit.tools.demo import run_demo

    run_demo(epochs=args.epochs, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit", description="Low-bit CNNs: INQ, GDRQ, LBW-Net, Group-Net and the "
        "equal-size bit-width study, with honest measurements.")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logs and tracebacks")
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}",
                        help="print lowbit's version and exit")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("train", help="train (float or with a quant: section)")
    _add_config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train as N processes on this machine (distributed, gloo on CPU); "
                   "the same result as one process with the same global batch")
    p.add_argument("--run-dir", help="where to write the run (default: out_dir/name)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its dataset's full test set")
    p.add_argument("checkpoint", help="a run checkpoint, packed .lowbit or folded file")
    _add_model_arg(p)
    p.add_argument("--data-dir", help="dataset root (default: $LOWBIT_DATA, else ./data)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(fn=cmd_eval)

    sub.add_parser("models", help="list registered models").set_defaults(fn=cmd_models)
    sub.add_parser("methods", help="list registered methods").set_defaults(fn=cmd_methods)
    sub.add_parser("datasets", help="list datasets").set_defaults(fn=cmd_datasets)

    p = sub.add_parser("quantize", help="fine-tune a trained checkpoint with a low-bit method")
    _add_config_args(p)
    p.add_argument("--method", required=True, help="a registered method (lowbit methods)")
    p.add_argument("--bits", type=int, required=True, help="weight bits (quant.weight.bits)")
    p.add_argument("--from", dest="source", required=True, metavar="CHECKPOINT",
                   help="the trained float checkpoint to start from")
    _add_model_arg(p)
    p.add_argument("--run-dir", help="where to write the run")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(fn=cmd_quantize)

    p = sub.add_parser("inspect", help="per-layer bits, bytes, MACs, BOPs, codebook compliance")
    p.add_argument("target", metavar="CHECKPOINT_OR_RECIPE",
                   help="a checkpoint, packed or folded file, or an experiment YAML")
    _add_model_arg(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--hist",
        metavar="DIR",
        help="also draw each layer's weight and input histograms (before/after clip, levels "
        "marked) as PNGs into DIR",
    )
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("export", help="write the bit-packed deployable artifact (.lowbit)")
    p.add_argument("checkpoint", help="the run checkpoint to export")
    _add_model_arg(p)
    p.add_argument("-o", "--output", help="output path (default: CHECKPOINT.lowbit)")
    p.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold quantization scales into BN (integer weights x per-channel affine); "
        "writes a folded model that `lowbit eval` loads",
    )
    p.add_argument("--format", choices=["lowbit", "onnx"], default="lowbit",
                   help="onnx: an ONNX graph for onnxruntime (needs the lowbit[onnx] extra)")
    p.add_argument("--flavour", choices=["float", "int", "int-exact"], default="int",
                   help="ONNX flavour: float weights; int8 codes with QDQ activations (convs "
                   "fuse into integer kernels); int-exact: the same codes, no conv fused, "
                   "biases exact")
    p.add_argument("--json", action="store_true", help="print the output path and size as JSON")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("reproduce", help="run an experiments/*.yaml row and check its target")
    p.add_argument("experiment", help="an experiments/*.yaml file")
    p.add_argument("--record", action="store_true",
                   help="write the result and checkpoint copy into --results-dir and "
                   "--checkpoints-dir (the committed tables); without it they stay in the run "
                   "directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value of the experiment (repeatable)")
    p.add_argument("--data-dir", help="dataset root (default: $LOWBIT_DATA, else ./data)")
    p.add_argument("--run-dir", help="run directory (default: out_dir/<experiment name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--record-only", action="store_true", help="record a finished run, no training")
    p.add_argument("--results-dir", default="benchmarks/results",
                   help="where --record writes the result JSON")
    p.add_argument("--checkpoints-dir", default="benchmarks/checkpoints",
                   help="where --record copies the checkpoint")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(fn=cmd_reproduce)

    p = sub.add_parser("sweep", help="one run per value of a config key, best by validation")
    _add_config_args(p)
    p.add_argument("--param", required=True, help="dotted config key, e.g. quant.r")
    p.add_argument("--values", nargs="+", required=True, help="the values to try (YAML each)")
    p.add_argument("--out", default="runs/sweep", help="folder for the runs and sweep.json")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn=cmd_sweep)

    from lowbit.study.cli import add_parser as add_study_parser

    add_study_parser(sub)

    p = sub.add_parser("demo", help="embedded end-to-end demo (digits, no downloads)")
    p.add_argument("--epochs", type=int, default=15, help="epochs of the float run")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    quiet_rank = int(os.environ.get("RANK", "0")) > 0  # under torchrun only rank 0 prints
    if quiet_rank:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's lifetime
    logging.basicConfig(
        level=logging.ERROR if quiet_rank else logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    fn: Callable[[argparse.Namespace], Any] = args.fn
    try:
        if getattr(args, "model", None):
            from lowbit.models import trust_model

            trust_model(args.model)
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
