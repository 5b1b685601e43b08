"""Exact stored size: the meta-device count equals cost_report and the packed file's content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lowbit.accounting import cost_report
from lowbit.artifacts import export_file
from lowbit.config import build_config
from lowbit.engine.checkpoint import save_checkpoint, with_prefix
from lowbit.models import create_model
from lowbit.study.configs import run_config
from lowbit.study.size import (
    build_meta,
    depthwise_names,
    full_table,
    layer_macs,
    model_size,
    quant_rules,
    table_size,
    weight_spec,
)
from lowbit.study.solver import ZooFactory
from lowbit.transform import quantize_model


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "vgg_small"])
@pytest.mark.parametrize("width", [0.37, 1.0])
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_meta_count_equals_cost_report(name: str, width: float, bits: int) -> None:
    model = create_model(name, width=width)
    table = full_table(model, bits)
    quantized = quantize_model(model, quant_rules(table, depthwise_names(model))).model
    report = cost_report(quantized, (1, 3, 32, 32))
    counted = model_size(ZooFactory(name), width, bits)
    assert counted.total == report.bytes
    assert counted.params == report.params
    meta = build_meta(ZooFactory(name), width)
    assert sum(layer_macs(meta, (1, 3, 32, 32)).values()) == report.macs


def test_mixed_table_and_float_layers() -> None:
    model = create_model("resnet20", width=0.5)
    table = full_table(model, 2, first_last_bits=32)
    table["layer2.0.conv1"], table["layer3.2.conv2"] = 8, 1
    quantized = quantize_model(model, quant_rules(table)).model
    size = table_size(model, table)
    assert size.total == cost_report(quantized, (1, 3, 32, 32)).bytes
    first, last = model.conv1.weight.numel(), model.fc.weight.numel()
    assert size.float_weights == 4 * (first + last)
    assert size.biases == 4 * model.fc.bias.numel()
    assert size.scales == 4 * (len(table) - 2)  # one per-tensor scale per quantized layer


def test_ternary_is_per_channel_on_depthwise_convs_only() -> None:
    """A per-tensor ternary scale zeroes whole depthwise channels and BN then blows their
    gradient up (the MobileNetV2 2-bit study run trained at 10 %): depthwise convs get one
    scale per channel, counted in the size; every other layer keeps one per tensor."""
    model = create_model("mobilenet_v2", width=0.35)
    depthwise = depthwise_names(model)
    assert len(depthwise) == 17 and "features.3.conv.0" in depthwise
    assert not depthwise_names(create_model("resnet20"))
    table = full_table(model, 2)
    rules = quant_rules(table, depthwise)
    assert rules[r"features\.5\.conv\.3"]["weight"] == {"name": "ternary", "per_channel": True}
    assert rules[r"features\.5\.conv\.0"]["weight"] == {"name": "ternary"}
    channels = sum(model.get_submodule(n).out_channels for n in depthwise)
    per_tensor = 4 * (len(table) - len(depthwise))
    assert table_size(model, table).scales == per_tensor + 4 * channels
    for bits in (1, 4, 8):  # only ternary changes
        assert table_size(model, full_table(model, bits)).scales == 4 * len(table)
    quantized = quantize_model(model, rules).model
    with torch.no_grad():  # a depthwise layer whose channels differ 30x in scale
        dw = quantized.get_submodule("features.5.conv.3")
        dw.weight.copy_(torch.randn_like(dw.weight) * torch.logspace(-1.5, 0, dw.out_channels)
                        .view(-1, 1, 1, 1))
        kept = dw.weight_quant(dw.weight).flatten(1).ne(0).any(1)
    assert bool(kept.all())  # no channel zeroed


def test_full_table_rejects_bad_tables() -> None:
    model = create_model("small_cnn", in_channels=3)
    with pytest.raises(ValueError, match="unknown layers"):
        full_table(model, {"nope": 2})
    with pytest.raises(ValueError, match="lacks"):
        full_table(model, {"features.3": 2})
    with pytest.raises(ValueError, match="bits"):
        weight_spec(16)


def _packed_file(tmp: Path, name: str, width: float, bits: int) -> tuple[Path, float]:
    meta_model = build_meta(ZooFactory(name), width)
    config = run_config({"model": name}, {"data": {"name": "cifar10"}}, width, 0,
                        full_table(meta_model, bits), "x", depthwise_names(meta_model))
    cfg = build_config(base=config)
    model = quantize_model(create_model(name, width=width), config["quant"]["rules"]).model
    with torch.no_grad():  # trained-looking BN statistics; values do not change sizes
        for p in model.parameters():
            p.normal_()
    meta = {"config": cfg.to_dict(), "model": name, "dataset": "cifar10", "num_classes": 10,
            "in_channels": 3}
    ckpt = save_checkpoint(tmp / "c.safetensors", with_prefix("model", model.state_dict()), meta)
    return export_file(ckpt, tmp / "m.lowbit"), model_size(ZooFactory(name), width, bits).total


@pytest.mark.parametrize(("name", "width", "bits"), [
    ("resnet20", 1.0, 1), ("resnet20", 0.5, 2),
    ("resnet20", 1.5, 4), ("resnet20", 1.0, 8), ("resnet20", 1.36, 2),
    ("mobilenet_v2", 0.5, 1), ("mobilenet_v2", 0.5, 4),
    ("mobilenet_v2", 0.78, 2), ("vgg_small", 0.25, 2)])
def test_size_matches_packed_file(tmp_path: Path, name: str, width: float, bits: int) -> None:
    path, counted = _packed_file(tmp_path, name, width, bits)
    raw = path.read_bytes()
    index_len = int.from_bytes(raw[:8], "little")
    index = json.loads(raw[8:8 + index_len])
    header = index["header"]["data_offsets"]  # the compressed JSON header tensor
    overhead = 8 + index_len + header[1] - header[0]  # format: index, config, checksums
    content = len(raw) - overhead  # codes, scales, float tensors, BN (+ its step counters)
    assert counted <= content and abs(content - counted) / counted < 0.02
    assert overhead < 2048  # the format's fixed cost, stated apart from the model's size
