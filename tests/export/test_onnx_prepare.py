"""`dequantize_unfused`: the weights of convs that cannot fuse are dequantized at load, with the
same values; the convs that fuse keep their QDQ weights and still run as QLinearConv."""

from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lowbit.export.fold import fold_bn  # noqa: E402
from lowbit.export.onnx import OnnxModule, runtime_graph, session, to_onnx  # noqa: E402
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


def test_a_conv_that_would_fuse_once_its_bias_add_folds_keeps_its_dq(tmp_path: Path) -> None:
    """4-bit codes keep each folded conv's bias in a separate Add so that the conv does not fuse.
    With a float weight onnxruntime would fold that Add, fuse the conv and quantize the weight
    with its own scale: the first conv of each block keeps its DQ weight; the others (into the
    residual sum) are dequantized; nothing fuses, as in the file."""
    folded = fold_bn(resnet(method={"method": "gdrq", "weight": {"bits": 4}, "act": {"bits": 4}}))
    proto = to_onnx(folded, "int")
    prepared, changed = dequantize_unfused(proto)
    assert changed == 11
    assert optimized_ops(prepared, tmp_path)["QLinearConv"] == 0


def test_runtime_graph_prepares_int_graphs_but_not_int_exact(tmp_path: Path) -> None:
    model = resnet(method=METHODS["gdrq"])
    raw = to_onnx(model, "int").SerializeToString()
    prepared = onnx.load_from_string(runtime_graph(raw))
    assert weight_dqs(prepared) == weight_dqs(onnx.load_from_string(raw)) - 11
    path = tmp_path / "m.onnx"
    path.write_bytes(raw)
    for source in (path, str(path), onnx.load(str(path))):
        assert runtime_graph(source) == prepared.SerializeToString()
    exact = to_onnx(model, "int-exact").SerializeToString()
    assert runtime_graph(exact) is exact  # its DQs stay: the convs sum as unoptimized


def test_session_without_spinning_sets_the_option() -> None:
    raw = to_onnx(resnet(method=METHODS["gdrq"]), "int").SerializeToString()
    entry = "session.intra_op.allow_spinning"
    calm = session(raw, 2, spinning=False).get_session_options()
    assert calm.get_session_config_entry(entry) == "0"
    with pytest.raises(RuntimeError, match=entry):  # unset: onnxruntime's default, spinning
        session(raw, 2).get_session_options().get_session_config_entry(entry)


def tiny(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A hand-made graph on input x (1, 2, 4, 4) with these nodes and initializers."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CODES = {"wq": np.ones((2, 2, 1, 1), np.int8), "ws": np.array([0.5, 0.25], np.float32),
         "wz": np.zeros(2, np.int8), "s": np.float32(0.1), "z": np.uint8(0)}


def test_a_shared_weight_is_dequantized_once() -> None:
    proto = tiny([helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
                  helper.make_node("Conv", ["x", "w"], ["a"]),
                  helper.make_node("Conv", ["x", "w"], ["b"]),
                  helper.make_node("Add", ["a", "b"], ["y"])], CODES)
    prepared, changed = dequantize_unfused(proto)
    onnx.checker.check_model(prepared)  # initializer names stay unique
    assert changed == 2 and [n.op_type for n in prepared.graph.node] == ["Conv", "Conv", "Add"]
    assert "wq" not in {i.name for i in prepared.graph.initializer}  # the codes went with the DQ
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    run = [ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0] for p in (proto, prepared)]
    assert np.array_equal(run[0], run[1])


@pytest.mark.parametrize(("zero", "kept"), [(np.uint8(0), True), (np.int8(0), False)])
def test_conv_relu_quantize_fuses_only_at_the_zero_point_minimum(zero: np.generic,
                                                                 kept: bool) -> None:
    """onnxruntime drops a Relu before QuantizeLinear only when the zero point is the type's
    minimum; otherwise the conv does not fuse and its weight is dequantized."""
    proto = tiny([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
                  helper.make_node("Conv", ["xd", "w"], ["c"]),
                  helper.make_node("Relu", ["c"], ["r"]),
                  helper.make_node("QuantizeLinear", ["r", "s", "zq"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "zq"], ["y"])],
                 {**CODES, "zq": zero})
    assert dequantize_unfused(proto)[1] == (0 if kept else 1)


def test_gemm_weights_keep_their_dq() -> None:
    """A DQ-fed Gemm fuses even without a QuantizeLinear after it (QGemm): left alone."""
    proto = tiny([helper.make_node("Flatten", ["x"], ["f"]),
                  helper.make_node("DequantizeLinear", ["gq", "s", "gz"], ["g"]),
                  helper.make_node("Gemm", ["f", "g"], ["y"])],
                 {"gq": np.ones((32, 3), np.int8), "s": np.float32(0.1), "gz": np.int8(0)})
    assert dequantize_unfused(proto)[1] == 0


def test_foreign_files_pass_through() -> None:
    """A graph without lowbit metadata and nothing to dequantize is handed over as it is."""
    raw = tiny([helper.make_node("Relu", ["x"], ["y"])], {}).SerializeToString()
    assert runtime_graph(raw) is raw
