"""The study's report, generated from its result files only (`<results_dir>/runs/*.json`).

- `rows(results)`: one row per run (bits, width, exact size, MACs, BOPs, top-1);
- `summary(results)`: one row per (budget, bits or method), mean and spread over seeds;
- `markdown(results)`: the summary as a markdown table (`update_readme` puts it in the README
  between `<!-- study-table:NAME:start -->` and `<!-- study-table:NAME:end -->`, NAME the plan's);
- `pareto_plot(results, path)`: top-1 against stored size, one curve per weight bit-width,
  mixed-precision points marked, the float reference as a dashed line.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from lowbit.tools.plots import pyplot

_MARKERS = {"greedy": "s", "knapsack": "D"}


def load_results(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished run result of a plan's results folder, in file-name order."""
    files = sorted((Path(results_dir) / "runs").glob("*.json"))
    return [json.loads(f.read_text()) for f in files]


def label(result: dict[str, Any]) -> str:
    """`w4`, `greedy`, `knapsack` or `float`."""
    return f"w{result['bits']}" if result["kind"] == "uniform" else str(result["kind"])


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One plain row per run, ordered by budget, label and seed."""
    out = [{"run": r["id"], "budget": r["budget"] or "-", "weights": label(r),
            "width": r["width"], "bytes": r["bytes"], "macs": r["macs"], "bops": r["bops"],
            "top1": r["top1"], "seed": r["seed"]} for r in results]
    return sorted(out, key=lambda x: (str(x["budget"]), str(x["weights"]), x["seed"]))


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (budget, label): mean top-1, its spread (max - min) and the number of seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows(results):
        groups[(r["budget"], r["weights"])].append(r)
    out = []
    for (budget, weights), members in sorted(groups.items()):
        top = [m["top1"] for m in members]
        out.append({"budget": budget, "weights": weights, "width": members[0]["width"],
                    "bytes": members[0]["bytes"], "macs": members[0]["macs"],
                    "bops": members[0]["bops"], "top1": statistics.fmean(top),
                    "spread": max(top) - min(top), "seeds": len(top)})
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    """The summary as a markdown table (one row per budget and weight setting)."""
    lines = ["| budget | weights | width | size (KB) | MACs (M) | BOPs (G) | top-1 % | seeds |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in summary(results):
        spread = f" ± {s['spread'] / 2:.2f}" if s["seeds"] > 1 else ""
        lines.append(f"| {s['budget']} | {s['weights']} | {s['width']:g} | "
                     f"{s['bytes'] / 1000:.1f} | {s['macs'] / 1e6:.1f} | {s['bops'] / 1e9:.2f} | "
                     f"{s['top1']:.2f}{spread} | {s['seeds']} |")
    return "\n".join(lines) + "\n"


def update_readme(path: str | Path, table: str, name: str) -> None:
    """Replace the text between the study-table markers of plan `name` in `path` by `table`."""
    path = Path(path)
    text = path.read_text()
    start, end = f"<!-- study-table:{name}:start -->", f"<!-- study-table:{name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} block to fill")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{table}{end}{tail}")


def pareto_plot(results: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Write the accuracy-vs-size plot (mean over seeds, error bar = seed spread) as PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    points = summary(results)
    for weights in sorted({p["weights"] for p in points}):
        mine = sorted((p for p in points if p["weights"] == weights), key=lambda p: p["bytes"])
        xs, ys = [p["bytes"] / 1000 for p in mine], [p["top1"] for p in mine]
        errs = [p["spread"] / 2 for p in mine]
        if weights == "float":
            ax.axhline(ys[0], color="grey", ls="--", lw=1, label=f"float ({xs[0]:.0f} KB)")
        elif weights in _MARKERS:
            ax.errorbar(xs, ys, yerr=errs, ls="none", marker=_MARKERS[weights], ms=8,
                        mfc="none", mew=2, label=f"mixed: {weights}")
        else:
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=f"{weights} (uniform)")
    ax.set_xlabel("stored size (KB)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title or "accuracy at equal model size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
