"""Exercise every recipe on CUDA and time it, on a CIFAR-10 subset small enough to travel.

The lent GPU machine takes at most 64 MiB of files and cannot reach the official CIFAR-10 files
(163 MB, and CIFAR-10 does not compress losslessly below about 100 MB), so the GPU table of
`run_experiments.py --gpu` cannot run there on the real data. This check runs that same
script, at the same longer budgets, on a subset saved as an image folder, and records:

- whether each recipe trains, evaluates and records on CUDA (its exit status, its log's tail);
- each run's training speed on the GPU (images/s, 8 runs sharing it) and, from that, how long
  the real table (50,000 training images) would take;
- the checkpoints, so `lowbit eval` on a CPU can be checked against the GPU's evaluation.

Subset accuracies are not results: they come from 1,280 training images.

    # here: write the subset (PNG folders) from the official files
    python benchmarks/gpu_check.py subset --data-dir ../shared/data --out gpu_data/cifar10_sub
    # on the GPU machine
    python benchmarks/gpu_check.py run experiments --data folder:gpu_data/cifar10_sub \\
        --out $OUT --deadline 480
    # here again: the CPU's evaluation of what came back, beside the GPU's
    python benchmarks/gpu_check.py compare DIR --out cpu_eval.json   # DIR: the unpacked tars
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import run_experiments  # noqa: E402
from lowbit.data import load_dataset  # noqa: E402
from lowbit.data.cifar import CIFAR10_CLASSES  # noqa: E402

TRAIN_IMAGES = 50_000  # the real table's training set
CHECKPOINT_GROUPS = ("inq", "lbw", "gdrq", "groupnet")  # one tar each; the rest in a fifth
CHECKPOINT_TAR_BYTES = 15 << 20


def write_subset(data_dir: str, out: Path, n_train: int, n_test: int) -> None:
    """The first `n_train` training and `n_test` test images of CIFAR-10 as PNG folders."""
    splits = load_dataset("cifar10", data_dir)
    for split, data, n in (("train", splits.train, n_train), ("val", splits.test, n_test)):
        for i in range(n):
            folder = out / split / CIFAR10_CLASSES[int(data.labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            image = data.images[i].permute(1, 2, 0).numpy()
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    print(f"wrote {n_train} training and {n_test} test images under {out}/")


def work_folders(work: Path) -> tuple[Path, Path, Path]:
    """The run's results, checkpoints and logs folders under its work folder."""
    return work / "results", work / "checkpoints", work / "logs"


def summarise(experiments: list[Path], work: Path, seconds: float) -> dict:
    """One entry per experiment under the `work` folder: ok / failed / not run, its speed, its
    projected full time (a log's tail names the work folder as $WORK, not this machine's path)."""
    (results, _, logs), rows = work_folders(work), {}
    for exp in experiments:
        name = exp.stem
        result, log = results / f"{name}.json", logs / f"{name}.log"
        if result.exists():
            r = json.loads(result.read_text())
            ips = r.get("median_images_per_s") or 0.0
            rows[name] = {"status": "ok", "epochs": r["epochs"], "subset_top1": r["top1"],
                          "train_seconds": r["train_seconds"], "images_per_s": ips,
                          "projected_full_train_s": round(r["epochs"] * TRAIN_IMAGES / ips, 1)
                          if ips else None}
        else:
            lines = log.read_text().splitlines()[-15:] if log.exists() else []
            tail = [line.replace(str(work), "$WORK") for line in lines]
            status = ("not run" if not log.exists() else
                      "stopped" if tail and tail[-1] == run_experiments.STOPPED else "failed")
            rows[name] = {"status": status, "log_tail": tail}
    done = [r for r in rows.values() if r["status"] == "ok"]
    return {"wall_seconds": round(seconds, 1),
            **{s: sum(r["status"] == s for r in rows.values())
               for s in ("ok", "failed", "stopped", "not run")},
            # each run's own projection at the speed it had while sharing the GPU, summed
            "sum_projected_full_train_s": round(sum(r["projected_full_train_s"] or 0
                                                    for r in done), 1),
            "rows": rows}


def pack_checkpoints(folder: Path, out: Path) -> None:
    """The checkpoints as one tar per method (what comes back from the GPU machine: at most 8
    files of 16 MiB), each filled in name order up to CHECKPOINT_TAR_BYTES."""
    groups: dict[str, list[Path]] = {}
    for ckpt in sorted(folder.glob("*.safetensors")):
        method = ckpt.name.split("_")[0]
        groups.setdefault(method if method in CHECKPOINT_GROUPS else "other", []).append(ckpt)
    for method, files in groups.items():
        size = 0
        with tarfile.open(out / f"checkpoints_{method}.tar", "w") as tar:
            for ckpt in files:
                if size + ckpt.stat().st_size <= CHECKPOINT_TAR_BYTES:
                    tar.add(ckpt, arcname=f"checkpoints/{ckpt.name}")
                    size += ckpt.stat().st_size


def run(args: argparse.Namespace) -> int:
    import torch

    out, work = Path(args.out), Path(args.work or tempfile.mkdtemp(prefix="gpu_check-"))
    results, checkpoints, logs = work_folders(work)
    experiments = run_experiments.experiments(args.paths)
    argv = [*args.paths, "--data-dir", args.data_dir, "--gpu", "--parallel", str(args.parallel),
            "--runs", str(work / "runs"), "--results-dir", str(results),
            "--checkpoints-dir", str(checkpoints), "--logs", str(logs),
            "--deadline", str(args.deadline),
            *(a for kv in [f"data.name={args.data}", *args.set] for a in ("--set", kv))]
    start = time.time()
    run_experiments.main(argv)
    report = {"machine": {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                          else None, "torch": torch.__version__, "python": sys.version.split()[0]},
              "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
              "data": args.data, "parallel": args.parallel, "deadline_s": args.deadline,
              **summarise(experiments, work, time.time() - start)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    for folder, name in ((results, "results.tar.gz"), (logs, "logs.tar.gz")):
        if folder.exists():
            with tarfile.open(out / name, "w:gz") as tar:
                tar.add(folder, arcname=folder.name)
    pack_checkpoints(checkpoints, out)
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    return 0


def compare(args: argparse.Namespace) -> int:
    """`lowbit eval` (CPU) of each returned checkpoint beside the top-1 the GPU recorded."""
    folder = Path(args.folder).resolve()  # the evaluations run from ROOT
    rows = {}
    for result in sorted((folder / "results").glob("*.json")):
        gpu = json.loads(result.read_text())
        ckpt = folder / "checkpoints" / f"{result.stem}.safetensors"
        if not ckpt.exists():  # left behind by the size cap on what comes back
            rows[result.stem] = {"gpu_top1": gpu["top1"], "cpu_top1": None,
                                 "error": "checkpoint not returned"}
            continue
        cmd = [sys.executable, "-m", "lowbit.cli", "eval", str(ckpt), "--json",
               "--data-dir", args.data_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        cpu = json.loads(proc.stdout)["top1"] if proc.returncode == 0 else None
        rows[result.stem] = {"gpu_top1": gpu["top1"], "cpu_top1": cpu,
                             "error": proc.stderr.strip()[-300:] if cpu is None else None}
        print(f"{result.stem:50s} gpu {gpu['top1']:6.2f}  cpu {cpu}")
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def step_config(quant: dict | None) -> str:
    """The step benchmark configuration whose time stands for a row's training step (Group-Net:
    the v1 W1A4 step with the row's K, or W1A1 / layer-wise; AlexNet rows use ResNet-20's)."""
    if quant is None:
        return "float"
    method, weight = quant["method"], quant.get("weight") or {}
    if method == "groupnet":
        act = quant.get("act") or {}
        if quant.get("structure") == "layerwise":
            return "layerwise K=5 W1A4"
        return "v1 K=5 W1A1" if act.get("name") == "sign" else f"v1 K={quant['bases']} W1A4"
    if method == "lbw":
        return {2: "lbw w2 (exact ternary)"}.get(weight["bits"], "lbw w4 (threshold, as shipped)"
                                                 if weight.get("method") == "threshold"
                                                 else "lbw w4 (alternating)")
    if method == "gdrq":
        return f"gdrq w{weight['bits']}a4 (QAT stage)"
    return {"inq": "inq w5 (half frozen)"}.get(method, "qat w2a4 (uniform + PACT)")


def estimate(args: argparse.Namespace) -> int:
    """Each row's GPU time at the `--gpu` budgets: its epochs x 391 steps x the single-process
    step time of its kind, from the GPU step benchmarks (bf16, the recipes' precision)."""
    from lowbit.build import load_run

    folder = Path(args.steps_dir)
    qat = json.loads((folder / "qat_step_gpu.json").read_text())["modes"]["bf16_channels_last"]
    gn = json.loads((folder / "groupnet_step_gpu.json").read_text())["figures"]
    step_s = {k: v["median_s_per_step"] for k, v in {**qat, **gn}.items()}
    rows, steps_per_epoch = {}, -(-TRAIN_IMAGES // 128)
    for exp in run_experiments.experiments(args.paths):
        cfg = load_run(config_file=exp, overrides=run_experiments.gpu_settings(exp.stem, 1)).cfg
        kind = step_config(cfg.quant)
        seconds = cfg.train.epochs * steps_per_epoch * step_s[kind]
        rows[exp.stem] = {"epochs": cfg.train.epochs, "step": kind,
                          "step_ms": round(step_s[kind] * 1e3, 1),
                          "hours": round(seconds / 3600, 2)}
    total = sum(r["hours"] for r in rows.values())
    report = {"command": "python benchmarks/gpu_check.py estimate " + " ".join(sys.argv[2:]),
              "steps_from": [str(folder / "qat_step_gpu.json"),
                             str(folder / "groupnet_step_gpu.json")],
              "steps_per_epoch": steps_per_epoch, "total_hours": round(total, 1), "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(rows)} rows, about {total:.1f} GPU-hours at one run at a time")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("subset", help="write the CIFAR-10 subset as PNG folders")
    s.add_argument("--data-dir", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=int, default=1280)
    s.add_argument("--test", type=int, default=1000)
    r = sub.add_parser("run", help="run the GPU table on the subset, summarise into --out")
    r.add_argument("paths", nargs="+")
    r.add_argument("--data", required=True, help="folder:<path> of the subset")
    r.add_argument("--data-dir", default="data")
    r.add_argument("--out", required=True)
    r.add_argument("--work", help="folder for the runs (default: a new temporary folder)")
    r.add_argument("--parallel", type=int, default=8)
    r.add_argument("--deadline", type=float, default=480.0)
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one more override for every run (e.g. train.device=cpu to try it here)")
    c = sub.add_parser("compare", help="CPU evaluation of the returned checkpoints")
    c.add_argument("folder", help="the unpacked results/ and checkpoints/ of a run")
    c.add_argument("--data-dir", default="data")
    c.add_argument("--out", required=True)
    e = sub.add_parser("estimate", help="the table's GPU time from the GPU step benchmarks")
    e.add_argument("paths", nargs="+")
    e.add_argument("--steps-dir", default="benchmarks/results/gpu")
    e.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.verb == "estimate":
        return estimate(args)
    if args.verb == "subset":
        write_subset(args.data_dir, Path(args.out), args.train, args.test)
        return 0
    return run(args) if args.verb == "run" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
