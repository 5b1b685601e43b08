"""Knowledge distillation: the loss formula, and a student trained against a teacher checkpoint."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lowbit.api import train
from lowbit.config import DistillConfig, build_config
from lowbit.engine.distill import distill_loss
from lowbit.schema import ConfigError


def test_distill_loss_formula() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    ce = torch.tensor(1.7)
    cfg = DistillConfig(teacher="x", temperature=3.0, weight=0.75)
    p_t = F.softmax(t / 3, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 3, 1))).sum(1).mean()
    assert distill_loss(ce, s, t, cfg).item() == pytest.approx(0.25 * 1.7 + 0.75 * 9 * kl.item())
    # the student equal to the teacher: only the CE part is left
    assert distill_loss(ce, t, t, cfg).item() == pytest.approx(0.25 * 1.7, abs=1e-6)


def test_distill_config_rejects_bad_values(tmp_path: Path, tiny_config) -> None:
    base = tiny_config(tmp_path, epochs=1)
    for bad, key in (({"teacher": ""}, "teacher"), ({"teacher": "a", "weight": 1.5}, "weight"),
                     ({"teacher": "a", "temperature": 0}, "temperature")):
        with pytest.raises(ConfigError, match=key):
            build_config(base={**base, "distill": bad})


def test_student_learns_from_teacher(tmp_path: Path, tiny_config) -> None:
    teacher_cfg = {**tiny_config(tmp_path, epochs=6), "optim": {"lr": 0.2}}
    teacher = train(build_config(base=teacher_cfg), run_path=tmp_path / "t")
    cfg = {**tiny_config(tmp_path, epochs=3), "optim": {"lr": 0.2}}
    cfg["distill"] = {"teacher": str(tmp_path / "t" / "final.safetensors"), "weight": 1.0,
                      "temperature": 2.0}
    student = train(build_config(base=cfg), run_path=tmp_path / "s")
    assert math.isfinite(student["loss"])
    assert student["top1"] > 50.0  # 4 classes; soft targets alone teach the task
    assert teacher["top1"] > 90.0
