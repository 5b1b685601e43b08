"""The packed artifact: bit packing, exact size, and a model that evaluates like its checkpoint."""

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.api import evaluate_checkpoint, load_model, train
from lowbit.config import build_config
from lowbit.errors import CheckpointError
from lowbit.export import export_packed, read_packed
from lowbit.export.bitpack import pack_bits, unpack_bits


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(bits: int, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 2**bits, (n,), generator=gen)
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, n), values)


def test_pack_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="must lie in"):
        pack_bits(torch.tensor([0, 4]), 2)


@pytest.fixture(scope="module")
def ternary_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("packed")
    cfg = build_config(
        base={
            "model": {"name": "small_cnn", "width": 0.5},
            "data": {"name": "synthetic"},
            "train": {"epochs": 2, "progress": False},
            "quant": {
                "method": "qat",
                "weight": {"name": "ternary"},
                "act": {
                    "name": "uniform",
                    "bits": 4,
                    "signed": False,
                    "clip": "fixed",
                    "clip_value": 4.0,
                },
            },
        }
    )
    train(cfg, run_path=tmp / "run")
    return tmp / "run" / "final.safetensors"


def test_packed_model_matches_checkpoint(ternary_run: Path, tmp_path: Path) -> None:
    path = export_packed(ternary_run, tmp_path / "m.lowbit")
    packed_model, header = load_model(path)
    model, _ = load_model(ternary_run)
    x = torch.randn(8, 3, 16, 16)
    torch.testing.assert_close(packed_model(x), model(x), rtol=1e-5, atol=1e-5)
    assert evaluate_checkpoint(path)["top1"] == evaluate_checkpoint(ternary_run)["top1"]
    # Quantized layers are stored at 2 bits per weight: codes bytes = ceil(N * 2 / 8).
    tensors, header = read_packed(path)
    for name, info in header["layers"].items():
        n = torch.Size(info["shape"]).numel()
        assert info["bits"] == 2
        assert tensors[f"{name}.weight.codes"].numel() == -(-n * 2 // 8)
        assert f"{name}.weight" not in tensors
    assert path.stat().st_size < ternary_run.stat().st_size / 3


def test_truncated_packed_file(ternary_run: Path, tmp_path: Path) -> None:
    path = export_packed(ternary_run, tmp_path / "m.lowbit")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        read_packed(path)
