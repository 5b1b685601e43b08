"""ONNX export of any lowbit model (`export_onnx`) and evaluation through onnxruntime (`load_onnx`).

How the graph is made: the model is traced with torch.fx (quantized layers, quantizers and
folded layers kept whole) and each traced node is lowered to ONNX nodes with `onnx.helper`,
through a registry of lowerings per module type (`lowbit.export.onnx_graph`). Not
`torch.onnx.export`: its dynamo exporter needs onnxscript, the TorchScript one is deprecated in
torch 2.13 and neither knows lowbit's quantizers, which would each need a symbolic function
anyway; lowering the module tree ourselves keeps the export offline, dependency-light
(onnx + onnxruntime, the `lowbit[onnx]` extra) and exact, and lets a new layer type register its
own lowering without touching this file (Group-Net's binary convs and K-branch sums do:
`lowbit.export.onnx_groupnet`).

Flavours:
- "float": float weights holding the quantized values and the activation fake-quant arithmetic
  as float ops. Always possible; runs anywhere; equals PyTorch to float rounding.
- "int": every conv + BN pair that folds (`lowbit.export.fold`) is folded first; weights whose
  codes fit int8 are stored as int8 with per-channel scales (`DequantizeLinear`), activations
  with a frozen uniform grid become `QuantizeLinear` (uint8, scale = step, zero point 0, plus an
  integer Clip for fewer than 8 bits), so onnxruntime's QDQ fusion runs QLinearConv (integer
  kernels) wherever a conv's output feeds an activation quantizer. Anything else stays float.
  In a ResNet block only the first conv fuses: the second one's output joins the float
  residual sum (as in the fake-quant model), so it runs as a float conv on dequantized codes;
  requantizing the residual would change the model's outputs. See `lowbit.export.onnx_quant`
  for the exact mapping and its rounding argument.
- "int-exact": "int" with every folded conv's bias kept in a separate Add, so that no conv
  fuses and no bias is rounded to the accumulator unit: the same int8 codes and QDQ
  activations, onnxruntime's float convolution on them. A fused QLinearConv rounds its bias to
  within ~1.3e-3 of an activation step, which moves the codes that sit that close to a rounding
  boundary; on a Group-Net K=5 checkpoint that changed 53 of 10,000 test predictions, against
  2 in "int-exact".

Metadata (`metadata_props`): `lowbit.format`, `lowbit.flavour`, `lowbit.layers` (JSON: per layer,
the weight quantizer config, bits, codes, per-channel scales and storage; the activation bits,
step and code range) and `lowbit.meta` (the run's config, model, dataset, classes, channels).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from torch import nn

import lowbit.export.onnx_groupnet  # noqa: F401  (registers Group-Net's lowerings)
import lowbit.export.onnx_ops  # noqa: F401  (registers the standard lowerings)
import lowbit.export.onnx_quant  # noqa: F401  (registers the quantized lowerings)
from lowbit.data import input_shape_for
from lowbit.engine.checkpoint import atomic_write_bytes
from lowbit.errors import CheckpointError, LowbitError
from lowbit.export.fold import FoldedConvBN
from lowbit.export.integer import fold_foldable
from lowbit.export.onnx_graph import (
    FLAVOURS,
    GraphBuilder,
    build_model,
    input_shapes,
    lower_graph,
    trace,
)
from lowbit.export.onnx_prepare import dequantize_unfused

log = logging.getLogger(__name__)

FORMAT = "lowbit-onnx/1"
_RUN_KEYS = ("config", "model", "dataset", "num_classes", "in_channels")


def _in_channels(model: nn.Module, meta: dict[str, Any]) -> int:
    if "in_channels" in meta:
        return int(meta["in_channels"])
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            return int(m.in_channels if isinstance(m, nn.Conv2d) else m.in_features)
        if isinstance(m, FoldedConvBN):
            return int(m.weight_codes.shape[1] * m.groups)
    raise LowbitError("export_onnx: cannot tell the input channels; pass input_shape")


def _dataset_shape(model: nn.Module, meta: dict[str, Any]) -> tuple[int, ...] | None:
    """(C, H, W) of one input when the metadata names the run's dataset: the model's input
    channels, the dataset's image size (`config.data.image_size` for folder datasets)."""
    if "dataset" not in meta:
        return None
    image_size = int(meta.get("config", {}).get("data", {}).get("image_size", 32))
    _, h, w = input_shape_for(str(meta["dataset"]), image_size)
    return _in_channels(model, meta), h, w


def to_onnx(model: nn.Module, flavour: str = "float", meta: dict[str, Any] | None = None,
            input_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
    """The checked ONNX model of `model` (not modified) in `flavour`; see the module docstring.

    Args:
        model: any lowbit model (fake-quantized, folded, packed-and-loaded or float), whose
            activation clips are trained or calibrated.
        flavour: "float", "int" or "int-exact".
        meta: run metadata (as `lowbit.api.load_model` returns it) for `lowbit.meta`.
        input_shape: (C, H, W) of one input; default (in_channels, "height", "width"), or
            the dataset's image size when a layer needs a known input size (adaptive pooling
            to a grid larger than 1x1, as in AlexNet and VGG) and `meta` names the dataset.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
    meta = dict(meta or {})
    model = copy.deepcopy(model).float().eval()
    if flavour != "float":
        model, _ = fold_foldable(model)
    b = GraphBuilder("float" if flavour == "float" else "int", fuse=flavour != "int-exact")
    known = input_shape or _dataset_shape(model, meta)
    if known:
        b.probe = functools.partial(input_shapes, model, known)
    with torch.no_grad():
        output = lower_graph(model, trace(model), b, "input")
    fixed = input_shape or b.static_input  # else H and W stay free
    shape: list[Any] = ["batch", *(known if fixed and known else
                                   (_in_channels(model, meta), "height", "width"))]
    props = {"lowbit.format": FORMAT, "lowbit.flavour": flavour,
             "lowbit.layers": json.dumps(b.layers),
             "lowbit.meta": json.dumps({k: meta[k] for k in _RUN_KEYS if k in meta})}
    return build_model(b, "input", output, shape, props)


def export_onnx(model: nn.Module, path: str | Path, flavour: str = "float",
                meta: dict[str, Any] | None = None,
                input_shape: tuple[int, ...] | None = None) -> Path:
    """Write `to_onnx(model, flavour, meta, input_shape)` to `path` (atomically)."""
    proto = to_onnx(model, flavour, meta, input_shape)
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


class OnnxModule(nn.Module):
    """An onnxruntime session behind the `nn.Module` call interface (float32 CPU tensors)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


Source = str | Path | bytes | onnx.ModelProto  # a model file, its bytes, or the parsed model


def session(model: Source, threads: int | None = None, optimize: bool = True,
            spinning: bool = True) -> ort.InferenceSession:
    """A CPU onnxruntime session (`threads` intra-op threads; None: onnxruntime's default).

    `optimize=False` turns graph optimizations off: onnxruntime then computes the ONNX
    semantics of the file op by op (QDQ in float), which equal lowbit's fake-quant model to float
    rounding. With them on (default), it fuses `DequantizeLinear -> Conv -> QuantizeLinear` into
    QLinearConv, whose integer requantization rounds the float bias to one accumulator unit
    (scale_x * scale_w); `lowbit.export.onnx_quant` picks per-channel code gains that make that
    rounding as small as int8 allows (exact for ternary/binary codes in practice). The session
    then runs `runtime_graph(model)`: the weights of convs that cannot fuse dequantized once, at
    load, instead of on every run.

    `spinning=False`: idle intra-op threads sleep at once instead of spinning (onnxruntime's
    default). Use it when several sessions share the cores: one session's spinning threads
    otherwise slow the next session's run (measured: 1.0x instead of 1.4x between two graphs
    timed side by side).
    """
    graph = runtime_graph(model) if optimize else _serialized(model)
    return ort.InferenceSession(graph, session_options(threads, optimize, spinning),
                                providers=["CPUExecutionProvider"])


def session_options(threads: int | None = None, optimize: bool = True,
                    spinning: bool = True) -> ort.SessionOptions:
    """The options `session` runs with (see there)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _serialized(model: Source) -> str | bytes:
    """`model` as onnxruntime takes it: a path string or the serialized bytes."""
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    return str(model) if isinstance(model, Path) else model


def runtime_graph(model: Source) -> str | bytes:
    """What an optimized `session` hands to onnxruntime: the graph with the weights of convs
    that cannot fuse dequantized (`lowbit.export.onnx_prepare.dequantize_unfused`, the same
    values), or `model` itself when nothing changes. Not in the "int-exact" flavour, whose
    convs keep the unoptimized graph's summation order."""
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    if read_metadata(proto)["flavour"] == "int-exact":
        return _serialized(model)
    prepared, changed = dequantize_unfused(proto)
    return prepared.SerializeToString() if changed else _serialized(model)


def read_metadata(proto: onnx.ModelProto) -> dict[str, Any]:
    """The lowbit metadata of an ONNX model: run meta plus format, flavour and layers."""
    props = {p.key: p.value for p in proto.metadata_props}
    meta: dict[str, Any] = json.loads(props.get("lowbit.meta", "{}"))
    meta.update(format=props.get("lowbit.format", "onnx"), flavour=props.get("lowbit.flavour"),
                layers=json.loads(props.get("lowbit.layers", "{}")))
    return meta


def load_onnx(path: str | Path, threads: int | None = None,
              optimize: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """(callable model running the file in onnxruntime, metadata) for `lowbit eval model.onnx`.

    `threads` and `optimize`: as for `session`.

    Raises:
        CheckpointError: the file is missing or not a valid ONNX model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model {path} not found")
    try:
        proto = onnx.load(str(path))
        sess = session(proto if optimize else path, threads, optimize)
    except Exception as exc:  # onnx / onnxruntime raise their own exception types
        raise CheckpointError(f"{path} is not a loadable ONNX model ({exc})") from exc
    return OnnxModule(sess).eval(), read_metadata(proto)
