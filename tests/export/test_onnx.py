"""ONNX export: valid graphs that onnxruntime runs with PyTorch's outputs, for every method and
weight quantizer, in the float and the integer (QDQ) flavour; onnxruntime's integer kernels;
rounding of QuantizeLinear; metadata; the lowering registry; `load_onnx`."""

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from lowbit.cli import main  # noqa: E402
from lowbit.data import load_dataset  # noqa: E402
from lowbit.engine.evaluate import evaluate  # noqa: E402
from lowbit.errors import LowbitError  # noqa: E402
from lowbit.export.fold import fold_bn  # noqa: E402
from lowbit.export.onnx import export_onnx, load_onnx, session, to_onnx  # noqa: E402
from lowbit.export.onnx_graph import GraphBuilder, register_module_lowering  # noqa: E402
from lowbit.models import create_model, list_models  # noqa: E402
from lowbit.nn.layers import QuantAct  # noqa: E402
from lowbit.quant.inq import INQWeight  # noqa: E402
from lowbit.quant.uniform import LSQ, Uniform  # noqa: E402
from lowbit.recipes import parse_quant_section  # noqa: E402
from lowbit.transform import quantize_model  # noqa: E402
from onnx_support import METHODS, calibrated, check_onnx, resnet  # noqa: E402

ACT4 = {"name": "uniform", "bits": 4, "signed": False, "clip": "ema"}
WEIGHTS = [{"name": "pow2", "bits": 4}, {"name": "ternary"}, {"name": "twn"}, {"name": "binary"},
           {"name": "lbw", "bits": 3}, {"name": "dorefa", "bits": 2},
           {"name": "uniform", "bits": 4}, {"name": "scaleclip", "bits": 2, "group_size": 4},
           {"name": "lsq", "bits": 4}]


@pytest.mark.parametrize("flavour", ["float", "int"])
@pytest.mark.parametrize("act", [None, ACT4], ids=["weight-only", "a4"])
@pytest.mark.parametrize("weight", WEIGHTS, ids=[w["name"] for w in WEIGHTS])
def test_qat_models_match_pytorch(weight: dict[str, Any], act: dict[str, Any] | None,
                                  flavour: str) -> None:
    model = resnet({"weight": weight, "act": act})
    check_onnx(model, flavour, torch.randn(4, 3, 32, 32))


@pytest.mark.parametrize("flavour", ["float", "int"])
@pytest.mark.parametrize("method", list(METHODS))
def test_methods_match_pytorch(method: str, flavour: str) -> None:
    model = resnet(method=METHODS[method])
    for m in model.modules():  # INQ: run every partition, as after training
        if isinstance(getattr(m, "weight_quant", None), INQWeight):
            m.weight_quant.partition(m.weight.detach(), 1.0)
    check_onnx(model, flavour, torch.randn(4, 3, 32, 32))


@pytest.mark.parametrize("flavour", ["float", "int"])
def test_folded_gdrq_exports(flavour: str) -> None:
    folded = fold_bn(resnet(method=METHODS["gdrq"]))
    check_onnx(folded, flavour, torch.randn(4, 3, 32, 32))


def test_int_flavour_stores_int8_and_runs_integer_kernels(tmp_path: Path) -> None:
    model = resnet(method=METHODS["gdrq"])
    proto = to_onnx(model, "int")
    dtypes = {i.name: i.data_type for i in proto.graph.initializer}
    codes = [n for n in dtypes if ".weight_codes" in n]
    assert codes and all(dtypes[n] == onnx.TensorProto.INT8 for n in codes)
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) == 20
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert fused.count("QLinearConv") == 9  # every block's conv1: its output feeds conv2's grid


def test_wide_codes_stay_out_of_fusion_and_match(tmp_path: Path) -> None:
    """4-bit weight codes leave the bias rounding too coarse: those convs must not fuse."""
    folded = fold_bn(resnet(method={"method": "gdrq", "weight": {"bits": 4}, "act": {"bits": 4}}))
    proto = to_onnx(folded, "int")
    dtypes = {i.name: i.data_type for i in proto.graph.initializer}
    assert all(dtypes[n] == onnx.TensorProto.INT8 for n in dtypes if ".weight_codes" in n)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "opt.onnx"))
    assert "QLinearConv" not in [n.op_type for n in optimized.graph.node]
    check_onnx(folded, "int", torch.randn(4, 3, 32, 32))


def test_float_flavour_is_smaller_in_int() -> None:
    model = resnet(method=METHODS["gdrq"])
    sizes = {f: len(to_onnx(model, f).SerializeToString()) for f in ("float", "int")}
    assert sizes["int"] < 0.6 * sizes["float"]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_linear_rounds_like_lowbit(bits: int) -> None:
    q = Uniform(bits, signed=False, clip="fixed", clip_value=3.7)
    step = torch.tensor(3.7) / (2**bits - 1)
    k = torch.arange(-2, 2**bits + 2, dtype=torch.float32)
    mid = (k + 0.5) * step  # exact midpoints (ties), their float neighbours, and the clip region
    x = torch.cat([mid, torch.nextafter(mid, mid + 1), torch.nextafter(mid, mid - 1),
                   torch.linspace(-1, 5, 2001)]).view(1, 1, 1, -1)
    model = nn.Sequential(QuantAct(q))
    proto = to_onnx(model, "int", input_shape=(1, 1, x.shape[-1]))
    assert "QuantizeLinear" in [n.op_type for n in proto.graph.node]
    got = session(proto.SerializeToString()).run(None, {"input": x.numpy()})[0]
    assert torch.equal(torch.from_numpy(got), model(x))


def test_metadata_has_bits_and_codebooks(tmp_path: Path) -> None:
    model = resnet(method=METHODS["lbw"])
    meta = {"model": "resnet20", "dataset": "cifar10", "num_classes": 10, "in_channels": 3}
    path = export_onnx(model, tmp_path / "m.onnx", "int", meta=meta)
    runner, got = load_onnx(path)
    assert got["dataset"] == "cifar10" and got["flavour"] == "int"
    layer = got["layers"]["layer1.0.conv1"]
    assert layer["storage"] == "int8" and len(layer["accumulator_unit"]) == 4  # per channel
    assert set(layer["codes"]) <= {0, 1, -1, 2, -2, 4, -4}  # LBW 3 bits: 0, ±1, ±2, ±4 units
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (runner(x) - model(x)).abs().max() <= 1e-4


def test_load_onnx_evaluates_like_pytorch(tmp_path: Path) -> None:
    data = load_dataset("synthetic")
    torch.manual_seed(0)
    model = quantize_model(create_model("small_cnn", width=0.25, in_channels=3, num_classes=4),
                           weight="ternary", act=ACT4).model
    model = calibrated(model)
    runner, _ = load_onnx(export_onnx(model, tmp_path / "s.onnx", "int"))
    assert evaluate(runner, data.test) == pytest.approx(evaluate(model, data.test), abs=1e-3)


def test_unknown_module_is_refused_and_registration_adds_it() -> None:
    class Scale(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Scale(), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    with pytest.raises(LowbitError, match="mul"):
        to_onnx(model.eval())

    @register_module_lowering(Scale)
    def _scale(b: GraphBuilder, m: nn.Module, name: str, xs: list[str]) -> str:
        return b.op("Mul", [xs[0], b.const(torch.tensor(2.0), name)])

    check_onnx(model.eval(), "float", torch.randn(2, 3, 32, 32))


def test_load_onnx_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(LowbitError, match="not a loadable ONNX"):
        load_onnx(bad)


def test_cli_exports_onnx(tmp_path: Path) -> None:
    ckpt = Path(__file__).resolve().parents[2] / "benchmarks" / "checkpoints"
    out = tmp_path / "lbw.onnx"
    assert main(["export", str(ckpt / "lbw_w2_resnet20_cifar10.safetensors"), "--format", "onnx",
                 "-o", str(out)]) == 0
    runner, meta = load_onnx(out)
    assert meta["flavour"] == "int" and meta["dataset"] == "cifar10"
    assert runner(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def input_dims(proto: onnx.ModelProto) -> list[Any]:
    return [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]


MATRICES = ["MatMul", "MatMul"]


@pytest.mark.parametrize("grid, size, pool_ops", [
    (4, (32, 32), ["AveragePool"]), (3, (10, 10), MATRICES), ((None, 3), (10, 10), MATRICES),
    ((3, 5), (10, 14), MATRICES), (7, (4, 5), MATRICES), (5, (5, 5), []),
    (1, (10, 10), ["GlobalAveragePool"])])
def test_adaptive_pooling_to_a_grid_matches_pytorch(grid: Any, size: tuple[int, int],
                                                    pool_ops: list[str]) -> None:
    """A grid that divides the input pools with AveragePool, an uneven one (or one larger than
    the input) with PyTorch's overlapping windows as two pooling matrices, one equal to the input
    with nothing; the graph then takes only that input size."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(grid),
                          nn.Flatten()).eval()
    proto = to_onnx(model, "float", input_shape=(3, *size))
    assert [n.op_type for n in proto.graph.node][2:-1] == pool_ops  # after Conv, Relu
    assert input_dims(proto) == ["batch", 3, *size]
    x = torch.randn(2, 3, *size)
    got = session(proto.SerializeToString()).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert float((torch.from_numpy(got) - model(x)).abs().max()) < 1e-5


def test_adaptive_pooling_needs_a_known_input_size() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()
    with pytest.raises(LowbitError, match="input_shape"):
        to_onnx(model)
    proto = to_onnx(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)).eval())
    assert input_dims(proto) == ["batch", 3, "height", "width"]  # nothing depends on the size


def test_known_dataset_fixes_the_size_only_where_a_layer_needs_it() -> None:
    folder = {"dataset": "folder:/images", "config": {"data": {"image_size": 20}}}
    pooled = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(3), nn.Flatten()).eval()
    assert input_dims(to_onnx(pooled, meta=folder)) == ["batch", 3, 20, 20]
    model = create_model("resnet20", width=0.25).eval()
    assert input_dims(to_onnx(model, meta={"dataset": "cifar10"})) == ["batch", 3, "height",
                                                                        "width"]


def test_size_probe_does_not_calibrate_a_lazy_quantizer() -> None:
    """LSQ sets its step from its first input, even in eval mode: the size probe's zeros must not
    be that input, or an uncalibrated model would export with a made-up step."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          QuantAct(LSQ(4, signed=False)), nn.Flatten()).eval()
    with pytest.raises(LowbitError, match="calibrate its clip"):
        to_onnx(model, "int", input_shape=(3, 8, 8))
    assert not model[3].act_quant.initialized


def test_pooling_a_module_runs_at_several_sizes_is_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pool(x) + self.pool(x[:, :, ::2, ::2])

    with pytest.raises(LowbitError, match="ran on inputs"):
        to_onnx(Twice().eval(), input_shape=(3, 12, 12))


def test_wrong_input_shape_is_one_clear_error() -> None:
    model = create_model("alexnet", width=0.125).eval()
    with pytest.raises(LowbitError, match=r"does not run on inputs of shape \(1, 8, 8\)"):
        to_onnx(model, input_shape=(1, 8, 8))


@pytest.mark.parametrize("flavour", ["float", "int", "int-exact"])
@pytest.mark.parametrize("method", ["lbw", "gdrq"])
def test_quantized_alexnet_exports_at_its_dataset_size(method: str, flavour: str) -> None:
    """AlexNet pools to a 4x4 grid: the dataset in the run metadata fixes the input size (here
    64 x 64 images, so that the pooling is a real 2 x 2 AveragePool). In the
    "int" flavour only the file's ONNX semantics are exact: a fused QLinearConv's rounded bias can
    move a code by one step, and AlexNet's chain of seven quantized layers (no float residual
    between them, unlike ResNet) carries that on, so its logits are not held to one step; the
    full-test-set agreement is in benchmarks/results/onnx_equality_alexnet.json."""
    torch.manual_seed(0)
    model = calibrated(parse_quant_section(METHODS[method]).prepare(
        create_model("alexnet", width=0.125)))
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    meta = {"dataset": "folder:/images", "config": {"data": {"image_size": 64}}}
    if flavour != "int":
        check_onnx(model, flavour, x, optimized_step=False, meta=meta)
        return
    proto = to_onnx(model, flavour, meta)
    got = session(proto.SerializeToString(), optimize=False).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert float((torch.from_numpy(got) - model(x)).abs().max()) < 1e-4


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_exports_and_matches_pytorch(name: str) -> None:
    """Every built-in architecture (adaptive pooling to a grid included) at its dataset's size,
    with INQ weights (no activation quantizer: exact up to float rounding)."""
    torch.manual_seed(0)
    model = create_model(name) if name == "small_cnn" else create_model(name, width=0.25)
    model = calibrated(parse_quant_section(METHODS["inq"]).prepare(model))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    check_onnx(model, "int", x, optimized_step=False, meta={"dataset": "cifar10"})
