"""`lowbit inspect`: what a checkpoint (or a recipe's model) costs, layer by layer.

Accepts a training checkpoint (`*.safetensors`), a packed artifact (`*.lowbit`) or a recipe YAML
(the model is built untrained, to see its cost before training). Prints the per-layer table of
parameters, weight/activation bits, bytes, MACs, BOPs, distinct values and sparsity, the totals,
and the codebook-compliance result; `--json` gives the same as one JSON object.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lowbit.accounting import (
    ComplianceResult,
    CostReport,
    check_compliance,
    cost_report,
    render_table,
)
from lowbit.artifacts import format_of, load_model, model_from_config
from lowbit.console import make_console
from lowbit.data import input_shape_for

log = logging.getLogger(__name__)


@dataclass
class InspectReport:
    target: str
    model: str
    dataset: str
    cost: CostReport
    compliance: ComplianceResult
    file_bytes: int | None
    packed: bool = False  # the file is a packed `.lowbit` artifact: its size is the real cost

    @property
    def file_compression(self) -> float | None:
        """Float model bytes / this packed file's bytes (None unless the target is packed)."""
        if not self.packed or not self.file_bytes:
            return None
        return self.cost.float_bytes / self.file_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "model": self.model,
            "dataset": self.dataset,
            "file_bytes": self.file_bytes,
            "file_compression": self.file_compression,
            **self.cost.to_dict(),
            "compliance": self.compliance.to_dict(),
        }

    def print(self) -> None:
        console = make_console()
        console.print(render_table(self.cost, console.width))
        console.print(render_table(self.compliance, console.width))
        size = f", file {self.file_bytes / 1024:.1f} KiB" if self.file_bytes else ""
        if self.file_compression is not None:
            size += f" ({self.file_compression:.2f}x smaller than float on disk)"
        verdict = "PASS" if self.compliance.passed else "FAIL"
        console.print(
            f"{self.model} on {self.dataset}: {self.cost.bytes / 1024:.1f} KiB "
            f"accounted ({self.cost.compression:.2f}x smaller than float){size}; "
            f"codebook compliance {verdict}"
        )


def _load(target: str) -> tuple[nn.Module, str, str, dict[str, Any]]:
    if target.endswith((".yaml", ".yml")):
        from lowbit.build import load_run
        from lowbit.data import DATASET_INFO

        cfg = load_run(config_file=target).cfg
        channels, _, num_classes = DATASET_INFO.get(cfg.data.name, (3, 32, 10))
        model = model_from_config(cfg.to_dict(), num_classes, channels)
        return model.eval(), cfg.model.name, cfg.data.name, cfg.to_dict()
    model, meta = load_model(target)
    return model, meta["model"], meta["dataset"], meta["config"]


def _test_batch(dataset: str, config: dict[str, Any], size: int = 64) -> Tensor | None:
    """A batch of the dataset's test split for activation histograms, None if files are absent."""
    from lowbit.data import load_dataset
    from lowbit.errors import LowbitError

    try:
        data = load_dataset(dataset, config.get("data", {}).get("data_dir"))
    except (LowbitError, OSError) as exc:
        log.info("activation histograms skipped: no %s test data here (%s)", dataset, exc)
        return None
    return next(iter(data.test.batches(min(size, len(data.test)), train=False)))[0]


def inspect_target(target: str | Path, hist_dir: str | Path | None = None) -> InspectReport:
    """Cost table + compliance of a checkpoint, packed file or recipe."""
    target = str(target)
    model, name, dataset, config = _load(target)
    shape = (1, *input_shape_for(dataset))
    report = InspectReport(
        target, name, dataset, cost_report(model, shape), check_compliance(model), None
    )
    if not target.endswith((".yaml", ".yml")):
        report.file_bytes = Path(target).stat().st_size
        report.packed = format_of(target).name == "packed"
    if hist_dir is not None:
        from lowbit.tools.plots import distribution_histograms

        distribution_histograms(model, _test_batch(dataset, config), Path(hist_dir))
    return report
