"""Load-time preparation of a lowbit ONNX graph for onnxruntime: `dequantize_unfused`.

In the "int" flavours every quantized weight is stored as int8 codes behind a
`DequantizeLinear`. onnxruntime turns `DQ(x) -> Conv(DQ(w)) -> [Relu ->] QuantizeLinear` into
QLinearConv, an integer kernel. A conv whose output does not go on to a QuantizeLinear (in a
ResNet, the second conv of each block, whose output joins the float residual sum) cannot fuse,
and onnxruntime then keeps the weight's `DequantizeLinear` in the graph (it never
constant-folds a DQ while its QDQ fusions are on): the weight is dequantized on every run and
the conv misses the blocked-layout (NCHWc) float kernels that need a constant weight. On
ResNet-20 that made the int graph slower than the float one.

`dequantize_unfused` replaces, in memory, the `DequantizeLinear` of each such weight by the
float tensor it computes, (codes - zero point) * scale in float32, exactly what onnxruntime
computes at run time: the ONNX semantics are unchanged, value for value, and the file on disk
keeps its int8 codes. Convs that fuse keep their QDQ weights. `lowbit.export.onnx.session`
applies it whenever graph optimizations are on; a user running a lowbit file in their own
onnxruntime session can call it the same way:

    proto, _ = dequantize_unfused(onnx.load("model.onnx"))
    sess = onnxruntime.InferenceSession(proto.SerializeToString())
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")  # ops whose input 1 is a weight


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _fuses(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]],
           producer: dict[str, onnx.NodeProto]) -> bool:
    """Whether onnxruntime's QDQ fusion can take `node`: a DQ input and its output, through at
    most one Relu, consumed only by a QuantizeLinear."""
    src = producer.get(node.input[0])
    if src is None or src.op_type != "DequantizeLinear":
        return False
    outs = consumers.get(node.output[0], [])
    if len(outs) == 1 and outs[0].op_type == "Relu":
        outs = consumers.get(outs[0].output[0], [])
    return len(outs) == 1 and outs[0].op_type == "QuantizeLinear"


def _dequantized(dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> onnx.TensorProto:
    """The float32 tensor `dq` computes from its constant inputs, named after its output."""
    codes = numpy_helper.to_array(inits[dq.input[0]])
    shape = [1] * codes.ndim
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype("float32")
    if scale.ndim:  # per axis
        shape[_attr(dq, "axis", 1)] = -1
    zero = (numpy_helper.to_array(inits[dq.input[2]]).astype("float32").reshape(shape or ())
            if len(dq.input) > 2 and dq.input[2] else 0.0)
    value = (codes.astype("float32") - zero) * scale.reshape(shape or ())
    return numpy_helper.from_array(value.astype("float32"), f"{dq.output[0]}_dequantized")


def dequantize_unfused(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(a copy of `proto` with the weights of convs / matmuls that cannot fuse stored in float,
    how many were) -- see the module docstring. The copy computes the same values."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}
    folded = 0
    for node in list(graph.node):
        dq = producer.get(node.input[1]) if node.op_type in WEIGHT_OPS else None
        if (dq is None or dq.op_type != "DequantizeLinear"
                or not all(i in inits for i in dq.input if i)
                or _fuses(node, consumers, producer)):
            continue
        tensor = _dequantized(dq, inits)
        graph.initializer.append(tensor)
        node.input[1] = tensor.name
        consumers[dq.output[0]].remove(node)
        if not consumers[dq.output[0]]:
            graph.node.remove(dq)
        folded += 1
    used = {name for node in graph.node for name in node.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:  # the codes of removed DQs
        graph.initializer.remove(init)
    return proto, folded
