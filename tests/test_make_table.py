"""benchmarks/make_table.py: README results tables generated from result files (tmp files only)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from lowbit.api import train
from lowbit.artifacts import export_file
from lowbit.build import load_run

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_table.py"
README = """# title

intro text | with a pipe

<!-- results-table:start -->
(old table)
<!-- results-table:end -->

## After
tail text
"""


@pytest.fixture(scope="module")
def mt() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def experiment(name: str, top1: float, threshold: float | None, **extra: Any) -> dict[str, Any]:
    passed = None if threshold is None else top1 >= threshold
    return {"experiment": f"experiments/x/{name}.yaml", "top1": top1, "threshold": threshold,
            "passed": passed, "epochs": 200, "train_seconds": 5400.0,
            "commit": "0123456789abcdef+dirty", "model": "resnet20", "dataset": "cifar10",
            "checkpoint": f"benchmarks/checkpoints/{name}.safetensors", **extra}


def write(folder: Path, name: str, data: object) -> None:
    (folder / f"{name}.json").write_text(json.dumps(data))


def run(mt: ModuleType, tmp_path: Path, *extra: str) -> tuple[int, str]:
    readme = tmp_path / "README.md"
    if not readme.exists():
        readme.write_text(README)
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    code = mt.main(["--results-dir", str(results), "--readme", str(readme), *extra])
    return code, readme.read_text()


def outside(text: str) -> tuple[str, str]:
    head, rest = text.split("<!-- results-table:start -->")
    return head, rest.split("<!-- results-table:end -->")[1]


def test_zero_results_writes_a_line_and_keeps_the_rest(mt: ModuleType, tmp_path: Path) -> None:
    code, text = run(mt, tmp_path)
    assert code == 0
    assert "No experiment results recorded yet." in text
    assert "No speed benchmark results recorded yet." in text
    assert "(old table)" not in text
    assert outside(text) == outside(README)


def test_experiment_rows_sorted_with_verdicts(mt: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    size = {"weight_bits": [4], "packed_file_bytes": 163840, "compression": 6.71,
            "compliance": True}
    write(tmp_path / "results", "b_row", experiment("b_row", 91.234, 92.0, size=size,
                                                    machine={"cpu_model": "AMD EPYC"}))
    write(tmp_path / "results", "a_row", experiment("a_row", 92.5, 91.5))
    write(tmp_path / "results", "c_row", experiment("c_row", 90.0, None))
    write(tmp_path / "results", "quant_error_x", {"benchmark": "weight quantization error"})
    _, text = run(mt, tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "_row" in line]
    assert [r.split(" | ")[0] for r in rows] == ["| a_row", "| b_row", "| c_row"]
    assert "| 91.23 | 92.00 | **miss** | 4 | 160 | 6.7 | PASS | 200 | 90.0 | AMD EPYC |" \
        " 0123456+dirty |" in rows[1]
    assert "| pass | - | - | - | - | 200 |" in rows[0] and "| 90.00 | - | - |" in rows[2]
    assert rows[0].endswith("| benchmarks/checkpoints/a_row.safetensors |")
    assert "quant_error" not in text
    assert outside(text) == outside(README)


def test_idempotent_and_check(mt: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    write(tmp_path / "results", "a_row", experiment("a_row", 92.5, 91.5))
    assert run(mt, tmp_path, "--check")[0] == 1  # still the old block
    _, first = run(mt, tmp_path)
    code, second = run(mt, tmp_path)
    assert code == 0 and first == second
    assert run(mt, tmp_path, "--check")[0] == 0


def test_speed_table_headlines(mt: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    write(tmp_path / "results", "loader_overhead", {
        "git_commit": "abcdef0123", "git_dirty": True, "date": "2026-01-01",
        "figures": {"ratio": 1.04, "target_ratio": 1.1, "loader_fetch_ms_median": 5.0}})
    write(tmp_path / "results", "brevitas", {
        "commit": "fedcba98765", "date": "2026-01-02", "brevitas_version": "0.13.0",
        "target_ratio": 1.0, "modes": {"fp32": {"lowbit_ms_per_step": 300.0,
                                                "brevitas_ms_per_step": 400.0,
                                                "ratio_lowbit_over_brevitas": 0.75}}})
    write(tmp_path / "results", "qat_step", {"modes": "broken"})
    _, text = run(mt, tmp_path)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in lines[1:]] == [
        "| brevitas", "| loader_overhead", "| qat_step"]
    assert "0.75x" in lines[1] and "0.13.0" in lines[1] and "fedcba9" in lines[1]
    assert "1.040x" in lines[2] and "abcdef0+dirty" in lines[2]
    assert "unreadable result file" in lines[3]


def test_missing_marker_is_an_error(mt: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# no markers here\n")
    code, text = run(mt, tmp_path)
    assert code == 2 and text == "# no markers here\n"
    with pytest.raises(ValueError):
        mt.replace_block("<!-- results-table:end --> <!-- results-table:start -->", "x")


def test_a_row_resumed_at_a_later_commit_shows_both(mt: ModuleType) -> None:
    row = {"commit": "aad5a64994f0", "resumes": [{"commit": "aad5a64994f0"},
                                                 {"commit": "b2ae402abc"}]}
    assert mt.short_commit(row) == "aad5a64→b2ae402"
    assert mt.short_commit({"commit": "aad5a64994f0", "resumes": [{"commit": "aad5a64"}]}) \
        == "aad5a64"


def test_file_sizes_table_is_shown_with_its_command(mt: ModuleType) -> None:
    sizes = {"command": "python benchmarks/file_sizes.py", "commit": "abcdef123",
             "table": "| checkpoint | .lowbit KB |\n|---|---|\n| x | 1.0 |"}
    body = mt.render([("file_sizes", sizes)])
    assert "`python benchmarks/file_sizes.py`, commit abcdef1" in body
    assert "| x | 1.0 |" in body


def test_a_row_whose_yaml_changed_since_is_marked_stale(mt: ModuleType, tmp_path: Path,
                                                        tiny_config) -> None:
    cfg = tiny_config(tmp_path, epochs=1)
    train(load_run(base=cfg), run_path=tmp_path / "run")
    row = {"experiment": str(tmp_path / "row.yaml"),
           "checkpoint": str(tmp_path / "run" / "final.safetensors")}
    (tmp_path / "row.yaml").write_text(yaml.safe_dump(cfg))
    assert not mt.stale(row)
    cfg["optim"]["lr"] = 0.01  # the YAML now describes another run
    (tmp_path / "row.yaml").write_text(yaml.safe_dump(cfg))
    assert mt.stale(row)
    assert not mt.stale({"experiment": "elsewhere.yaml", "checkpoint": "gone.safetensors"})


def test_a_packed_row_is_checked_on_the_sections_its_file_keeps(mt: ModuleType, tmp_path: Path,
                                                                tiny_config) -> None:
    """A row committed as its packed .lowbit file: the file keeps model and method, not the
    training budget, so a changed method marks it stale and a changed budget cannot."""
    cfg = tiny_config(tmp_path, epochs=1)
    cfg["quant"] = {"method": "qat", "weight": {"name": "uniform", "bits": 4}}
    train(load_run(base=cfg), run_path=tmp_path / "run")
    packed = export_file(tmp_path / "run" / "final.safetensors", tmp_path / "row.lowbit")
    row = {"experiment": str(tmp_path / "row.yaml"), "checkpoint": str(packed)}
    (tmp_path / "row.yaml").write_text(yaml.safe_dump(cfg))
    assert not mt.stale(row)
    cfg["optim"]["lr"] = 0.01  # not in the packed file: the check cannot see it
    (tmp_path / "row.yaml").write_text(yaml.safe_dump(cfg))
    assert not mt.stale(row)
    cfg["quant"]["weight"]["bits"] = 2
    (tmp_path / "row.yaml").write_text(yaml.safe_dump(cfg))
    assert mt.stale(row)


def test_eval_forward_headline(mt: ModuleType) -> None:
    row = {"checkpoint": "lbw_w2_resnet20_cifar10",
           "ratio_vs_float": {"fake-quant": 1.01, "packed": 1.02, "integer": 19.5}}
    body = mt.render([("eval_forward", {"commit": "abc1234", "batch": 128, "threads": 2,
                                        "rows": [row]})])
    assert "lbw_w2 fake-quant 1.01x, packed 1.02x, integer 19.50x" in body
    assert "weight-only <= 1.05x; integer < 1x" in body


def test_xnor_headline_shows_layers_and_blocks_packed_once(mt: ModuleType) -> None:
    layer = {"cin": 16, "cout": 32, "kernel": 3, "stride": 2, "size": 32, "batch": 128,
             "speedup_float_over_xnor": 3.27}
    block = {"cin": 16, "cout": 32, "size": 32, "speedup_float_over_xnor": 1.98,
             "speedup_float_over_xnor_shared_pack": 3.26}
    body = mt.render([("xnor_speed", {"commit": "abc1234", "backend": "numba",
                                      "rows": [layer], "blocks": [block]})])
    assert "16->32 k3s2 32px 3.27x" in body
    assert "input packed once: 16->32 32px 3.26x (each conv packing: 1.98x)" in body


def test_qat_step_headline_keeps_configurations_that_share_a_name(mt: ModuleType) -> None:
    step = {"float": {"ratio_vs_float": 1.0}, "lbw w4 (alternating)": {"ratio_vs_float": 1.27},
            "lbw w4 (threshold, as shipped)": {"ratio_vs_float": 1.08},
            "inq w5 (half frozen)": {"ratio_vs_float": 1.02}}
    headline, _ = mt.SPEED["qat_step"]({"modes": {"bf16": step}, "targets": {}})
    assert "lbw w4 alternating 1.27x, lbw w4 threshold 1.08x, inq w5 1.02x" in headline
