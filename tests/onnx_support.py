"""Helpers of the ONNX export tests: calibration passes and the PyTorch-vs-onnxruntime check.
Import after `pytest.importorskip("onnxruntime")` (the `lowbit[onnx]` extra)."""

import json
from typing import Any

import onnx
import torch
from torch import nn

from lowbit.export.onnx import session, to_onnx
from lowbit.models import create_model
from lowbit.recipes import parse_quant_section
from lowbit.transform import quantize_model


def calibrated(model: nn.Module, seed: int = 0) -> nn.Module:
    """Train-mode passes set EMA clips, LSQ steps and BN statistics; then eval."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for scale in (1.0, 1.5, 0.8):
            model(torch.randn(16, 3, 32, 32) * scale)
    return model.eval()


METHODS = {"inq": {"method": "inq", "weight": {"bits": 4}},
           "lbw": {"method": "lbw", "weight": {"bits": 3}},
           "gdrq": {"method": "gdrq", "weight": {"bits": 2}, "act": {"bits": 4}}}


def resnet(spec: dict[str, Any] | None = None, method: dict[str, Any] | None = None) -> nn.Module:
    """A calibrated quarter-width ResNet-20, quantized by `spec` (QAT) or `method` (a recipe)."""
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25)
    if method is not None:
        model = parse_quant_section(method).prepare(model)
    elif spec is not None:
        model = quantize_model(model, **spec).model
    return calibrated(model)


def max_step(proto: onnx.ModelProto) -> float:
    """The largest activation step recorded in the model's metadata (0 without any)."""
    layers = json.loads(next(p.value for p in proto.metadata_props if p.key == "lowbit.layers"))
    steps = [v.get("act", {}).get("step") or v.get("act_step") or 0 for v in layers.values()]
    return max([0.0, *steps])


def check_onnx(model: nn.Module, flavour: str, x: torch.Tensor,
               optimized_step: bool | None = None,
               meta: dict[str, Any] | None = None) -> torch.Tensor:
    """ONNX semantics (onnxruntime without graph optimizations) equal PyTorch within 1e-4 (times
    the logits' scale when above 1: float32 rounding); the optimized session too for the float
    flavour, and within one activation step when integer kernels round the bias (int).

    `optimized_step` (default: int flavour only) allows the optimized session one activation
    step: its NCHWc convolutions sum in another order, so with many activation quantizers some
    value lies within float rounding of a code boundary and rounds the other way.
    `meta`: run metadata for `to_onnx` (e.g. the dataset, which fixes the input size).
    Returns the optimized session's output."""
    if optimized_step is None:
        optimized_step = flavour == "int"
    proto = to_onnx(model, flavour, meta)
    onnx.checker.check_model(proto, full_check=True)
    with torch.no_grad():
        want = model(x)
    for optimize in (False, True):
        out = session(proto.SerializeToString(), optimize=optimize).run(None, {"input": x.numpy()})
        got = torch.from_numpy(out[0])
        diff = float((got - want).abs().max())
        tol = 1e-4 * max(1.0, float(want.abs().max()))
        assert diff <= max(tol, max_step(proto) if optimize and optimized_step else 0)
    return got
