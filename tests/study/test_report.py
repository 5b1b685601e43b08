"""Report: tables and the Pareto plot from result files; the CLI verbs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.study.report import markdown, pareto_plot, summary, update_readme


def _result(run: str, kind: str, bits: int | None, seed: int, top1: float,
            size: float = 1000.0) -> dict:
    return {"id": run, "kind": kind, "bits": bits, "budget": "b1", "width": 1.5, "seed": seed,
            "bytes": size, "macs": 2_000_000, "bops": 3_000_000_000, "top1": top1}


RESULTS = [_result("b1-w1-s0", "uniform", 1, 0, 80.0), _result("b1-w1-s1", "uniform", 1, 1, 82.0),
           _result("b1-w8-s0", "uniform", 8, 0, 70.0, 990.0),
           _result("b1-greedy-s0", "greedy", None, 0, 75.0, 1005.0)]


def test_summary_averages_seeds() -> None:
    rows = {(s["budget"], s["weights"]): s for s in summary(RESULTS)}
    assert rows[("b1", "w1")]["top1"] == 81.0 and rows[("b1", "w1")]["spread"] == 2.0
    assert rows[("b1", "w1")]["seeds"] == 2 and rows[("b1", "greedy")]["seeds"] == 1


def test_markdown_and_readme(tmp_path: Path) -> None:
    table = markdown(RESULTS)
    assert "| b1 | w1 | 1.5 | 1.0 | 2.0 | 3.00 | 81.00 ± 1.00 | 2 |" in table
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- study-table:p:start -->\nold\n<!-- study-table:p:end -->\nb\n")
    update_readme(readme, table, "p")
    text = readme.read_text()
    assert "old" not in text and table in text and text.endswith("b\n")
    with pytest.raises(ValueError, match="no"):
        update_readme(readme, table, "other")


def test_pareto_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = pareto_plot(RESULTS, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_verb(plan_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    runs = plan_path.parent / "results" / "runs"
    assert main(["study", "report", str(plan_path)]) == 1  # nothing yet
    runs.mkdir(parents=True)
    for r in RESULTS:
        (runs / f"{r['id']}.json").write_text(json.dumps(r))
    assert main(["study", "report", str(plan_path)]) == 0
    assert (runs.parent / "pareto.png").is_file()
    assert (runs.parent / "table.md").read_text() == markdown(RESULTS)


def test_solve_verb(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "solve", "--model", "resnet20", "--bits", "2", "--like-bits", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["width"] == 1.0 and out["error"] == 0.0
    assert main(["study", "solve", "--model", "resnet20", "--bits", "2"]) == 2
