"""ONNX export of Group-Net models: binary convs with +-1 padding and XNOR scales, K-branch sums
(group-wise, layer-wise, gated), in both flavours, against PyTorch; `lowbit export --format
onnx` and `lowbit eval model.onnx` of a trained Group-Net checkpoint."""

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from lowbit.api import train  # noqa: E402
from lowbit.build import load_run  # noqa: E402
from lowbit.cli import main  # noqa: E402
from lowbit.export.onnx import OnnxModule, read_metadata, session, to_onnx  # noqa: E402
from lowbit.models import create_model  # noqa: E402
from lowbit.nn.multibranch import BinaryConv2d, BranchSum  # noqa: E402
from lowbit.recipes import parse_quant_section  # noqa: E402
from onnx_support import calibrated, check_onnx  # noqa: E402

GROUPNETS: dict[str, dict[str, Any]] = {
    "v1_a4": {"structure": "v1", "act": {"bits": 4}},
    "layerwise_a2": {"structure": "layerwise", "act": {"bits": 2}},
    "v1_w1a1": {"structure": "v1", "act": {"name": "sign"}},
    "v1_a4_gated": {"structure": "v1", "act": {"bits": 4}, "gates": True},
    "v2_w1a1_gated": {"structure": "v2", "act": {"name": "sign"}, "gates": True},
}


def groupnet(options: dict[str, Any]) -> nn.Module:
    """A calibrated Group-Net ResNet-20 at width 0.25 with K = 2 bases."""
    torch.manual_seed(0)
    section = parse_quant_section({"method": "groupnet", "bases": 2, **options})
    return calibrated(section.prepare(create_model("resnet20", width=0.25)))


@pytest.mark.parametrize("flavour", ["float", "int"])
@pytest.mark.parametrize("name", list(GROUPNETS))
def test_groupnet_matches_pytorch(name: str, flavour: str) -> None:
    """Logits within 1e-4 (ONNX semantics) and one activation step (optimized runtime). An
    untrained model's top-2 logits are near-ties, so identical top-1 is checked on trained
    checkpoints (the CLI test below)."""
    model = groupnet(GROUPNETS[name])
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    check_onnx(model, flavour, x, optimized_step=True)  # 40 quantizers: see check_onnx


def initializers(proto: onnx.ModelProto) -> dict[str, Any]:
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def test_w1a1_pads_with_plus_one_and_scales_like_xnor_net() -> None:
    model = groupnet(GROUPNETS["v1_w1a1"])
    binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    padded = [m for m in binary if m.explicit_pad() is not None]
    assert binary and padded and all(m.act_scale for m in binary)
    proto = to_onnx(model, "int")
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["Pad"] == len(padded) and ops["AveragePool"] == len(binary)
    inits = initializers(proto)
    fills = [v for k, v in inits.items() if ".pad.pad_value" in k]
    assert len(fills) == len(padded) and all(float(v) == 1.0 for v in fills)
    codes = [v for k, v in inits.items() if ".weight_codes" in k]
    assert len(codes) == len(binary)  # every binary weight stored as int8 codes +-1
    assert all(v.dtype.name == "int8" and set(v.flatten().tolist()) <= {-1, 1} for v in codes)
    layers = read_metadata(proto)["layers"]
    conv = next(n for n, m in model.named_modules() if isinstance(m, BinaryConv2d))
    assert layers[conv]["weight"]["storage"] == "int8" and layers[conv]["pad_value"] == 1.0
    assert len(layers[conv]["weight"]["scale"]) == model.get_submodule(conv).out_channels


def test_kbit_groupnet_int_graph_runs_integer_kernels(tmp_path: Path) -> None:
    model = groupnet(GROUPNETS["v1_a4"])
    proto = to_onnx(model, "int")
    ops = Counter(n.op_type for n in proto.graph.node)
    sums = sum(isinstance(m, BranchSum) for m in model.modules())
    assert sums == 9 and ops["QuantizeLinear"] > 0
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    fused = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert fused["QLinearConv"] >= sums * 2  # each base's first conv, in every block


def test_int_exact_graph_fuses_no_conv_and_keeps_the_file_semantics(tmp_path: Path) -> None:
    """"int-exact": the same int8 codes and QDQ activations, no QLinearConv after onnxruntime's
    optimizations, and optimized outputs equal to the unoptimized graph's (no bias rounding)."""
    model = groupnet(GROUPNETS["v1_a4"])
    proto = to_onnx(model, "int-exact")
    assert read_metadata(proto)["flavour"] == "int-exact"
    int_ops = Counter(n.op_type for n in to_onnx(model, "int").graph.node)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["QuantizeLinear"] == int_ops["QuantizeLinear"] > 0
    assert ops["DequantizeLinear"] == int_ops["DequantizeLinear"]
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "opt.onnx")).graph.node
    assert "QLinearConv" not in {n.op_type for n in optimized}
    x, raw = torch.randn(4, 3, 32, 32), proto.SerializeToString()
    fast, plain = (OnnxModule(session(raw, optimize=o))(x) for o in (True, False))
    assert torch.allclose(fast, plain, atol=1e-5)


def test_gates_are_lowered_where_pytorch_uses_them() -> None:
    model = groupnet(GROUPNETS["v1_a4_gated"])
    layers = read_metadata(to_onnx(model, "float"))["layers"]
    sums = [n for n, m in model.named_modules() if isinstance(m, BranchSum)]
    assert [layers[n]["gated"] for n in sums] == [False] + [True] * (len(sums) - 1)
    assert all(layers[n]["gate"] == pytest.approx(0.5) for n in sums[1:])  # theta starts at 0


@pytest.mark.parametrize("act", [{"name": "sign"}, {"bits": 2}], ids=["w1a1", "w1a2"])
def test_cli_exports_and_evaluates_a_trained_groupnet(act: dict[str, Any], tmp_path: Path,
                                                      tiny_config,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """`lowbit eval model.onnx`, both flavours: the checkpoint's top-1 exactly, its loss."""
    config = {**tiny_config(tmp_path, epochs=1),
              "quant": {"method": "groupnet", "bases": 2, "act": act}}
    train(load_run(base=config), run_path=tmp_path / "run")
    ckpt = tmp_path / "run" / "final.safetensors"
    assert main(["eval", str(ckpt), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    for flavour in ("float", "int", "int-exact"):
        out = tmp_path / f"gn.{flavour}.onnx"
        assert main(["export", str(ckpt), "--format", "onnx", "--flavour", flavour,
                     "-o", str(out)]) == 0
        capsys.readouterr()
        assert main(["eval", str(out), "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["top1"] == want["top1"] and got["loss"] == pytest.approx(want["loss"], abs=1e-4)
