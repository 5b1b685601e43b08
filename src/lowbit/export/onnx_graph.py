"""The machinery behind `export_onnx`: an ONNX graph builder and the lowering registries.

A model is traced with torch.fx, keeping every module type that has a registered lowering
whole (a leaf); the traced graph is then walked in order and each node is lowered to ONNX nodes:

- `call_module`: the lowering registered for the module's type (first match along its MRO),
  `fn(builder, module, qualified_name, input_values) -> output value`;
- `call_function` / `call_method`: the lowering registered for the function (e.g. `operator.add`,
  `torch.flatten`) or the method name (e.g. "flatten"), `fn(builder, args, kwargs) -> value`,
  where each traced tensor in args is a `Value` (an ONNX value name) and the rest are constants.

A new module type (e.g. a multi-branch binary layer) becomes exportable by registering its own
lowering with `register_module_lowering(MyType)`; nothing here changes. A lowering emits nodes
through `GraphBuilder.op` and constants through `GraphBuilder.const`; it reads the export
flavour ("float" or "int") from `builder.flavour` and may record per-layer metadata in
`builder.layers`. A container lowering (e.g. Group-Net's `BranchSum`) lowers its children with
`lower_module` (their own lowering, or their traced graph with names under the child's), and
lowerings that depend on one another's values share them through `builder.shared`.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import fx, nn

from lowbit.errors import LowbitError

OPSET = 17
FLAVOURS = ("float", "int", "int-exact")


@dataclass(frozen=True)
class Value:
    """The name of an ONNX value (a traced tensor) inside lowering arguments."""

    name: str


@dataclass
class GraphBuilder:
    """Accumulates ONNX nodes, initializers and per-layer metadata while lowering a model."""

    flavour: str = "float"
    fuse: bool = True  # "int": let onnxruntime fuse folded convs (biases rounded, see onnx_quant)
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared: dict[Any, Any] = field(default_factory=dict)
    probe: Callable[[], dict[str, list[tuple[int, ...]]]] | None = None  # see input_size
    _shapes: dict[str, list[tuple[int, ...]]] | None = None
    _ids: itertools.count = field(default_factory=itertools.count)

    @property
    def static_input(self) -> bool:
        """Whether a lowering used `input_size`, so the graph input size is fixed."""
        return self._shapes is not None

    def input_size(self, name: str) -> tuple[int, int]:
        """(H, W) of the input of module `name`, for lowerings that depend on it (e.g.
        adaptive pooling to a grid), from `probe` (run once, on the first call); the exported
        graph then takes only that input size."""
        if self.probe is None:
            raise LowbitError(f"export_onnx: {name} depends on the input size, which is not "
                              "known: pass input_shape=(C, H, W)")
        if self._shapes is None:
            self._shapes = self.probe()
        shapes = self._shapes.get(name, [])
        if len(shapes) != 1:
            seen = "did not run on a tensor" if not shapes else f"ran on inputs {shapes}"
            raise LowbitError(f"export_onnx: {name} depends on its input size, but {seen} in "
                              "the forward pass; its lowering needs one input size")
        return int(shapes[0][-2]), int(shapes[0][-1])

    def fresh(self, hint: str) -> str:
        """A new, unique value name derived from `hint`."""
        return f"{hint or 'v'}_{next(self._ids)}"

    def const(self, value: np.ndarray | np.generic | torch.Tensor | float | int, hint: str,
              dtype: Any = None) -> str:
        """Add an initializer (numpy dtype kept unless `dtype` is given); returns its name."""
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        array = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", domain: str = "",
           **attrs: Any) -> str:
        """Add one single-output node; returns the name of its output."""
        out = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, domain=domain,
                                           **attrs))
        return out


ModuleLowering = Callable[[GraphBuilder, nn.Module, str, list[str]], str]
FunctionLowering = Callable[[GraphBuilder, tuple[Any, ...], dict[str, Any]], str]
_MODULES: dict[type[nn.Module], ModuleLowering] = {}
_FUNCTIONS: dict[Any, FunctionLowering] = {}


def register_module_lowering(*types: type[nn.Module]) -> Callable[[ModuleLowering],
                                                                   ModuleLowering]:
    """Decorator: `fn` lowers modules of `types` (and subclasses without their own lowering)."""
    def wrap(fn: ModuleLowering) -> ModuleLowering:
        for t in types:
            _MODULES[t] = fn
        return fn
    return wrap


def register_function_lowering(*targets: Any) -> Callable[[FunctionLowering], FunctionLowering]:
    """Decorator: `fn` lowers calls of these functions, or of methods with these names."""
    def wrap(fn: FunctionLowering) -> FunctionLowering:
        for t in targets:
            _FUNCTIONS[t] = fn
        return fn
    return wrap


def module_lowering(module: nn.Module) -> ModuleLowering | None:
    """The lowering registered for the module's type or its nearest registered base class."""
    return next((_MODULES[t] for t in type(module).__mro__ if t in _MODULES), None)


class _Tracer(fx.Tracer):
    """Keeps every module with a registered lowering whole."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_lowering(m) is not None or super().is_leaf_module(m, module_qualified_name)


def input_shapes(model: nn.Module, shape: tuple[int, ...]) -> dict[str, list[tuple[int, ...]]]:
    """The input shapes each submodule (qualified name; a shared module under its first name)
    sees when `model` runs on one input of `shape` (C, H, W): one forward pass on zeros, through
    a copy (a lazily initialised quantizer must not calibrate itself on it), read by hooks."""
    model = copy.deepcopy(model).eval()
    seen: dict[str, list[tuple[int, ...]]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], torch.Tensor):
                shapes = seen.setdefault(name, [])
                if tuple(args[0].shape) not in shapes:
                    shapes.append(tuple(args[0].shape))
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    except Exception as exc:  # the model's own error on this input size
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise LowbitError(f"export_onnx: the model does not run on inputs of shape "
                          f"{tuple(shape)} ({type(exc).__name__}: {first})") from exc
    finally:
        for h in handles:
            h.remove()
    return seen


def trace(model: nn.Module) -> fx.Graph:
    """The fx graph of `model` with registered module types as leaves (clear error if fx fails)."""
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError on proxies, ...)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise LowbitError(f"export_onnx needs a model torch.fx can trace; tracing failed with "
                          f"{type(exc).__name__}: {first}") from exc


def _resolve(arg: Any, env: dict[str, str]) -> Any:
    """fx node arguments with traced tensors replaced by `Value`s (recursively)."""
    if isinstance(arg, fx.Node):
        return Value(env[arg.name])
    if isinstance(arg, tuple | list):
        return type(arg)(_resolve(a, env) for a in arg)
    if isinstance(arg, dict):
        return {k: _resolve(v, env) for k, v in arg.items()}
    return arg


def lower_module(b: GraphBuilder, module: nn.Module, name: str, inputs: list[str]) -> str:
    """Lower `module` (qualified name `name`) called on `inputs`: its registered lowering, else
    its traced graph (one input), whose nodes are named under `name`."""
    fn = module_lowering(module)
    if fn is not None:
        return fn(b, module, name, inputs)
    if len(inputs) != 1:
        raise LowbitError(f"export_onnx: {name} ({type(module).__name__}) has no lowering and "
                          "is called on several inputs")
    return lower_graph(module, trace(module), b, inputs[0], prefix=f"{name}.")


def lower_graph(model: nn.Module, graph: fx.Graph, b: GraphBuilder, input_name: str,
                prefix: str = "") -> str:
    """Lower every node of `graph` into `b`; returns the name of the (single) graph output.
    `prefix` is put before module names (a submodule's graph lowered inside its parent's)."""
    env: dict[str, str] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            if env:
                raise LowbitError("export_onnx supports models with a single input tensor")
            env[node.name] = input_name
        elif node.op == "call_module":
            module = model.get_submodule(str(node.target))
            fn = module_lowering(module)
            if fn is None:
                raise LowbitError(f"export_onnx: no ONNX lowering for {type(module).__name__} "
                                  f"({prefix}{node.target}); register one with "
                                  "register_module_lowering")
            inputs = [env[a.name] for a in node.args if isinstance(a, fx.Node)]
            env[node.name] = fn(b, module, f"{prefix}{node.target}", inputs)
        elif node.op in ("call_function", "call_method"):
            env[node.name] = _lower_call(b, node, env)
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise LowbitError("export_onnx supports models with a single output tensor")
            return env[out.name]
        else:
            raise LowbitError(f"export_onnx: unsupported graph node {node.op} {node.target}")
    raise LowbitError("export_onnx: the traced model has no output")


def _lower_call(b: GraphBuilder, node: fx.Node, env: dict[str, str]) -> str:
    fn = _FUNCTIONS.get(node.target)
    if fn is None:
        name = getattr(node.target, "__name__", str(node.target))
        raise LowbitError(f"export_onnx: no ONNX lowering for {node.op} {name}; register one "
                          "with register_function_lowering")
    return fn(b, _resolve(node.args, env), _resolve(node.kwargs, env))


def build_model(b: GraphBuilder, input_name: str, output: str, input_shape: list[Any],
                metadata: dict[str, str]) -> onnx.ModelProto:
    """The checked ONNX model of the builder's nodes: one float input, one float output whose
    shape comes from ONNX shape inference."""
    inputs = [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, input_shape)]
    untyped = helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph(b.nodes, "lowbit", inputs, [untyped], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lowbit")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    inferred = onnx.shape_inference.infer_shapes(model)
    typed = inferred.graph.output[0]
    if not typed.type.tensor_type.HasField("shape"):
        raise LowbitError("export_onnx: ONNX shape inference could not type the model output")
    model.graph.output[0].CopyFrom(typed)
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model
