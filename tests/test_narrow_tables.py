"""Tables stay readable in an 80-column terminal: fewer columns, none cut."""

from __future__ import annotations

from rich.console import Console

from lowbit.accounting import check_compliance, cost_report, render_table
from lowbit.models import create_model
from lowbit.tools.demo import _table
from lowbit.transform import quantize_model


def _lines(renderable: object, width: int) -> list[str]:
    console = Console(width=width, record=True, force_terminal=False)
    console.print(renderable)
    return console.export_text().splitlines()


def test_inspect_and_demo_tables_fit_80_columns() -> None:
    model = quantize_model(create_model("resnet20"), weight={"name": "ternary"},
                           act={"name": "uniform", "bits": 4, "signed": False}).model
    model(__import__("torch").randn(2, 3, 32, 32))
    cost, compliance = cost_report(model, (1, 3, 32, 32)), check_compliance(model)
    row = ["LBW exact ternary", "2", "32", "98.44", "32.2", "35.7", "11.5x", "yes"]
    for table in (render_table(cost, 80), render_table(compliance, 80), _table([row], 80)):
        lines = _lines(table, 80)
        assert all(len(line) <= 80 for line in lines)
        assert not any("…" in line for line in lines)  # nothing cut
    wide = _lines(render_table(cost, 140), 140)
    assert any("BOPs" in line for line in wide)
    narrow = "\n".join(_lines(render_table(cost, 80), 80))
    assert "layer2.1.conv1" in narrow and "2/4" in narrow
