"""Load-time preparation of a lowbit ONNX graph for onnxruntime: `dequantize_unfused`.

In the "int" flavours every quantized weight is stored as int8 codes behind a
`DequantizeLinear`. onnxruntime turns `DQ(x) -> Conv(DQ(w)) -> [Relu ->] QuantizeLinear` into
QLinearConv, an integer kernel. A conv whose output does not go on to a QuantizeLinear (in a
ResNet, the second conv of each block, whose output joins the float residual sum) cannot fuse,
and onnxruntime then keeps the weight's `DequantizeLinear` in the graph (it never
constant-folds a DQ while its QDQ fusions are on): the weight is dequantized on every run and
the conv misses the blocked-layout (NCHWc) float kernels that need a constant weight. On
ResNet-20 that made the int graph slower than the float one.

`dequantize_unfused` replaces, in memory, the `DequantizeLinear` of each such conv weight by the
float tensor it computes, (codes - zero point) * scale in float32, exactly what onnxruntime
computes at run time: the ONNX semantics are unchanged, value for value, and the file on disk
keeps its int8 codes. Convs that fuse keep their QDQ weights; so do Gemm and MatMul, which
onnxruntime fuses with a DQ input even without a QuantizeLinear after them (QGemm,
MatMulIntegerToFloat). `lowbit.export.onnx.session` applies it whenever graph optimizations are
on; a user running a lowbit file in their own onnxruntime session can call it the same way:

    proto, _ = dequantize_unfused(onnx.load("model.onnx"))
    sess = onnxruntime.InferenceSession(proto.SerializeToString(),
                                        providers=["CPUExecutionProvider"])
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

Consumers = dict[str, list[onnx.NodeProto]]


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    """Integer attribute `name` of `node`, or `default`."""
    return next((a.i for a in node.attribute if a.name == name), default)


def _zero_at_minimum(q: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """Whether QuantizeLinear `q`'s zero point is its type's minimum (a Relu before it is then
    a no-op that onnxruntime drops): uint8 zero point 0, or none given."""
    if len(q.input) < 3 or not q.input[2]:
        return True
    zero = inits.get(q.input[2])
    if zero is None:
        return False
    value = numpy_helper.to_array(zero)
    return bool(np.all(value == np.iinfo(value.dtype).min))


def _fuses(node: onnx.NodeProto, consumers: Consumers, producer: dict[str, onnx.NodeProto],
           inits: dict[str, onnx.TensorProto]) -> bool:
    """Whether onnxruntime would turn conv `node` into QLinearConv once its weight is float:
    a DQ input, and its output consumed, through ops onnxruntime folds into a float-weight conv
    (`_folds`) and at most one Relu (then only before a zero point at the type's
    minimum), by a single QuantizeLinear. onnxruntime then quantizes a float weight itself
    (its own scale: not lowbit's codes), so such a conv keeps its DQ weight."""
    src = producer.get(node.input[0])
    if src is None or src.op_type != "DequantizeLinear":
        return False
    outs, relu = consumers.get(node.output[0], []), False
    while len(outs) == 1 and (outs[0].op_type == "Relu" and not relu or _folds(outs[0], inits)):
        relu = relu or outs[0].op_type == "Relu"
        outs = consumers.get(outs[0].output[0], [])
    return (len(outs) == 1 and outs[0].op_type == "QuantizeLinear"
            and (not relu or _zero_at_minimum(outs[0], inits)))


def _folds(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """An op onnxruntime folds into a conv with a constant weight: BatchNormalization, or an
    Add / Mul of a constant (a conv's bias kept apart, a scale)."""
    return node.op_type == "BatchNormalization" or (
        node.op_type in ("Add", "Mul") and any(i in inits for i in node.input))


def _dequantized(dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
                 name: str) -> onnx.TensorProto:
    """The float32 tensor `dq` computes from its constant inputs, named `name`."""
    codes = numpy_helper.to_array(inits[dq.input[0]])
    shape = [1] * codes.ndim
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype("float32")
    if scale.ndim:  # per axis
        shape[_attr(dq, "axis", 1)] = -1
    zero = (numpy_helper.to_array(inits[dq.input[2]]).astype("float32").reshape(shape or ())
            if len(dq.input) > 2 and dq.input[2] else 0.0)
    value = (codes.astype("float32") - zero) * scale.reshape(shape or ())
    return numpy_helper.from_array(value.astype("float32"), name)


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a node of `graph` or of its subgraphs reads, and the graph's outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [*attr.graphs, *([attr.g] if attr.HasField("g") else [])]:
                names |= _read_names(sub)
    return names


def _drop_unread(graph: onnx.GraphProto, dqs: list[onnx.NodeProto]) -> None:
    """Remove the removed DQs' constant inputs that nothing reads any more."""
    read = _read_names(graph) | {i.name for i in graph.input}
    gone = {name for dq in dqs for name in dq.input if name and name not in read}
    for init in [i for i in graph.initializer if i.name in gone]:
        graph.initializer.remove(init)


def dequantize_unfused(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(a copy of `proto` with the weights of convs that cannot fuse stored in float, how many
    convs changed) -- see the module docstring. The copy computes the same values."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: Consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}
    made: dict[str, str] = {}  # DQ output -> its dequantized initializer
    changed = 0
    for node in [n for n in graph.node if n.op_type == "Conv"]:
        dq = producer.get(node.input[1])
        if (dq is None or dq.op_type != "DequantizeLinear"
                or not all(i in inits for i in dq.input if i)
                or _fuses(node, consumers, producer, inits)):
            continue
        if dq.output[0] not in made:
            name = _unique(f"{dq.output[0]}_dequantized", inits)
            inits[name] = _dequantized(dq, inits, name)
            graph.initializer.append(inits[name])
            made[dq.output[0]] = name
        node.input[1] = made[dq.output[0]]
        consumers[dq.output[0]].remove(node)
        changed += 1
    removed = [producer[out] for out in made if not consumers[out]]
    for dq in removed:
        graph.node.remove(dq)
    _drop_unread(graph, removed)
    return proto, changed


def _unique(name: str, taken: dict[str, onnx.TensorProto]) -> str:
    """`name`, or `name_2`, `name_3`, ... if it is taken."""
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    return out
