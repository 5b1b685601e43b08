"""`dequantize_unfused`: the weights of convs that cannot fuse are dequantized at load, with the
same values; the convs that fuse keep their QDQ weights and still run as QLinearConv."""

from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from lowbit.export.onnx import OnnxModule, session, to_onnx  # noqa: E402
from lowbit.export.onnx_prepare import dequantize_unfused  # noqa: E402
from onnx_support import METHODS, resnet  # noqa: E402


def optimized_ops(proto: onnx.ModelProto, tmp_path: Path) -> Counter[str]:
    """Op counts of the graph onnxruntime runs after its optimizations."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)


def weight_dqs(proto: onnx.ModelProto) -> int:
    return sum(n.op_type == "DequantizeLinear" and "weight_codes" in n.input[0]
               for n in proto.graph.node)


def test_unfused_weights_are_dequantized_with_the_same_values(tmp_path: Path) -> None:
    proto = to_onnx(resnet(method=METHODS["gdrq"]), "int")
    prepared, folded = dequantize_unfused(proto)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    # the 9 blocks' first convs fuse; the second convs and the 2 shortcuts do not (the stem and
    # the classifier stay float)
    assert folded == len(convs) - 1 - 9 == 11
    assert weight_dqs(prepared) == weight_dqs(proto) - folded
    assert dequantize_unfused(prepared)[1] == 0  # nothing left to fold
    x = torch.randn(4, 3, 32, 32)
    plain = [OnnxModule(session(p.SerializeToString(), optimize=False))(x)
             for p in (proto, prepared)]
    assert torch.equal(plain[0], plain[1])  # the ONNX semantics, value for value
    before, after = optimized_ops(proto, tmp_path), optimized_ops(prepared, tmp_path)
    assert after["QLinearConv"] == before["QLinearConv"] == 9
    assert after["DequantizeLinear"] < before["DequantizeLinear"]
    stored = sum(len(i.raw_data) for i in prepared.graph.initializer)
    assert stored > sum(len(i.raw_data) for i in proto.graph.initializer)  # float in memory only


def test_session_prepares_int_graphs_but_not_int_exact() -> None:
    """Optimized int sessions run the prepared graph (the same outputs within float rounding);
    "int-exact" keeps its DQs, so its convs sum as in the unoptimized graph."""
    model = resnet(method=METHODS["gdrq"])
    x = torch.randn(4, 3, 32, 32)
    raw = to_onnx(model, "int").SerializeToString()
    fast, plain = (OnnxModule(session(raw, optimize=o))(x) for o in (True, False))
    assert fast.argmax(1).tolist() == plain.argmax(1).tolist()
    exact = to_onnx(model, "int-exact").SerializeToString()
    fast, plain = (OnnxModule(session(exact, optimize=o))(x) for o in (True, False))
    assert torch.allclose(fast, plain, atol=1e-5)


def test_session_without_spinning_gives_the_same_outputs() -> None:
    raw = to_onnx(resnet(method=METHODS["gdrq"]), "int").SerializeToString()
    x = torch.randn(2, 3, 32, 32)
    spin, calm = (OnnxModule(session(raw, 2, spinning=s))(x) for s in (True, False))
    assert torch.equal(spin, calm)
