"""`torch.export.export` takes every method's model in eval mode (issue 12), and the exported
program gives the eager logits: same quantization levels, no data-dependent branch baked in."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lowbit.models import create_model
from lowbit.recipes import parse_quant_section

SECTIONS: list[dict[str, Any]] = [
    {"method": "qat"},
    {"method": "qat", "weight": {"bits": 2}, "act": {"name": "uniform", "bits": 4,
                                                     "signed": False, "clip": "learned"}},
    {"method": "inq"},
    {"method": "lbw", "weight": {"bits": 2, "per_channel": True}},
    {"method": "lbw", "weight": {"bits": 4, "iters": 3}},  # the loop unrolls: keep it short
    {"method": "lbw", "weight": {"bits": 4, "method": "threshold"}},
    {"method": "gdrq"},
    {"method": "groupnet", "bases": 2},
]


def _id(section: dict[str, Any]) -> str:
    return "-".join(f"{v}" if not isinstance(v, dict) else "".join(map(str, v.values()))
                    for v in section.values())


@pytest.mark.parametrize("section", SECTIONS, ids=_id)
def test_every_method_exports_and_matches_eager(section: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = parse_quant_section(section).prepare(create_model("resnet20", width=0.25))
    x = torch.randn(4, 3, 16, 16)
    model.train()
    model(x)  # the first training batch sets data-driven state (activation ranges)
    model.eval()
    with torch.no_grad():
        eager = model(x)
    program = torch.export.export(model, (x,))
    exported = program.module()(x.clone())
    torch.testing.assert_close(exported, eager, rtol=0, atol=1e-5)
