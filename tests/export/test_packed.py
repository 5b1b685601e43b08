"""The packed artifact: bit packing, exact reload for every method, exact size, integrity."""

import json
import os
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from lowbit import quantize_model
from lowbit.accounting import check_compliance
from lowbit.api import evaluate_checkpoint, train
from lowbit.artifacts import export_file, load_model, load_packed, save_model
from lowbit.cli import main
from lowbit.config import build_config
from lowbit.engine.checkpoint import META_KEY, SUM_KEY, digest
from lowbit.errors import CheckpointError, LowbitError
from lowbit.export.bitpack import entropy_decode, entropy_encode, pack_bits, unpack_bits
from lowbit.export.frozen import Decoded
from lowbit.export.packed import pack_model, read_header
from lowbit.quant import list_quantizers
from lowbit.recipes import list_recipes

_TINY = {
    "model": {"name": "small_cnn", "width": 0.25},
    "data": {"name": "synthetic", "batch_size": 256, "eval_batch_size": 128},
    "train": {"progress": False, "seed": 0},
}
_METHODS = {  # smallest schedules; each trains 2-4 steps on 512 synthetic images
    "inq": {"method": "inq", "weight": {"bits": 4}, "portions": [0.5, 1.0],
            "epochs_per_step": 1},
    "lbw": {"method": "lbw"},
    "gdrq": {"method": "gdrq", "reshape_epochs": 1, "quant_epochs": 1,
             "weight": {"group_size": 4}},
    "groupnet": {"method": "groupnet", "bases": 2, "act": {"bits": 2, "clip_value": 2.0}},
}
_WEIGHT_QUANTIZERS = [q for q in list_quantizers() if q != "inq"]  # inq: only via its recipe


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(bits: int, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 2**bits, (n,), generator=gen)
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, n), values)


@settings(max_examples=30, deadline=None)
@given(levels=st.integers(1, 256), n=st.integers(0, 3000), seed=st.integers(0, 2**16))
def test_entropy_round_trip(levels: int, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, levels, (n,), generator=gen)
    assert torch.equal(entropy_decode(entropy_encode(values), n), values)
    with pytest.raises(ValueError, match="hold"):
        entropy_decode(entropy_encode(values), n + 1)


def test_entropy_coding_beats_fixed_bits_on_skewed_codes() -> None:
    gen = torch.Generator().manual_seed(0)
    skewed = torch.multinomial(torch.tensor([0.05, 0.9, 0.05]), 50_000, True, generator=gen)
    # entropy of (.05, .9, .05) is 0.57 bits; fixed packing needs 2 (measured: 0.74)
    assert entropy_encode(skewed).numel() * 8 / 50_000 < 0.8
    probs = torch.tensor([0.02, 0.03, 0.05, 0.1, 0.2, 0.2, 0.2, 0.1, 0.05, 0.03, 0.02])
    wide = torch.multinomial(probs, 200_000, True, generator=gen)  # 11 levels: 4 bits fixed
    entropy = float(-(probs * probs.log2()).sum())  # 3.02 bits (measured: 3.18)
    assert entropy_encode(wide).numel() * 8 / 200_000 < 1.1 * entropy
    with pytest.raises(ValueError, match="corrupt|hold"):
        entropy_decode(torch.full((64,), 255, dtype=torch.uint8), 10)


def test_pack_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="must lie in"):
        pack_bits(torch.tensor([0, 4]), 2)


def _run(tmp: Path, quant: dict) -> Path:
    fixed = quant["method"] in ("inq", "gdrq")  # their schedules fix the epoch count
    train_section = {**_TINY["train"], **({} if fixed else {"epochs": 1})}
    cfg = build_config(base={**_TINY, "train": train_section, "quant": quant})
    train(cfg, run_path=tmp / "run")
    return tmp / "run" / "final.safetensors"


def _cases() -> list[tuple[str, dict]]:
    assert set(_METHODS) | {"qat"} == set(list_recipes()), "a new recipe needs a case here"
    qat = [(f"qat-{q}", {"method": "qat", "weight": {"name": q},
                         "act": {"name": "uniform", "bits": 4, "clip": "ema"}})
           for q in _WEIGHT_QUANTIZERS]
    return qat + list(_METHODS.items())


@pytest.mark.parametrize(("label", "quant"), _cases(), ids=[c[0] for c in _cases()])
def test_every_method_reloads_exactly(label: str, quant: dict, tmp_path: Path) -> None:
    ckpt = _run(tmp_path, quant)
    model, meta = load_model(ckpt)
    path = save_model(model, meta, tmp_path / "m.lowbit", "packed")
    loaded, header = load_model(path)
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)), label
    decoded = [m for m in loaded.modules() if isinstance(m, Decoded)]
    assert decoded and check_compliance(loaded).passed
    assert {q.bits for q in decoded} == {m.weight_quant.bits for m in model.modules()
                                         if hasattr(m, "weight_quant") and m.weight_quant}
    # packing a packed file again gives the same tensors and header, at the same size
    again = export_file(path, tmp_path / "again.lowbit")
    assert again.stat().st_size == path.stat().st_size
    first, second = load_file(path), load_file(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    coded = save_model(loaded, header, tmp_path / "e.lowbit", "packed-entropy")
    with torch.no_grad():
        assert torch.equal(load_model(coded)[0](x), model(x)), label
    # entropy coding is used only where it is smaller (its header adds a few bytes)
    assert coded.stat().st_size <= path.stat().st_size + 16, label


def test_entropy_coding_falls_back_to_fixed_bits_when_it_would_not_shrink() -> None:
    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 64, 3)),
                           {nn.Conv2d: {"weight": {"name": "binary"}}}).model
    fixed, _ = pack_model(model)
    coded, layout = pack_model(model, entropy=True)
    assert "codec" not in layout and torch.equal(coded["codes"], fixed["codes"])
    skewed = quantize_model(nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 64, 3)),
                            {nn.Conv2d: {"weight": {"name": "lbw", "bits": 4}}}).model
    coded, layout = pack_model(skewed, entropy=True)
    assert layout["codec"] == "lzma" and coded["codes"].numel() < pack_model(skewed)[0][
        "codes"].numel()


def test_gdrq_packed_file_scores_like_its_checkpoint(tmp_path: Path) -> None:
    ckpt = _run(tmp_path, _METHODS["gdrq"])
    path = export_file(ckpt, tmp_path / "m.lowbit")
    assert evaluate_checkpoint(path)["loss"] == evaluate_checkpoint(ckpt)["loss"]


@pytest.fixture(scope="module")
def ternary(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("packed")
    ckpt = _run(tmp, {"method": "qat", "weight": {"name": "ternary"},
                      "act": {"name": "uniform", "bits": 4, "clip": "fixed", "clip_value": 4.0}})
    return ckpt, export_file(ckpt, tmp / "m.lowbit")


def test_size_is_codes_at_their_bits_plus_float_tensors(ternary: tuple[Path, Path]) -> None:
    ckpt, path = ternary
    model, _ = load_packed(path)
    content = 0.0
    for _, layer in model.named_modules():
        q = getattr(layer, "weight_quant", None)
        if isinstance(q, Decoded):
            assert q.bits == 2
            content += layer.weight.numel() * q.bits / 8 + q.scale.numel() * 4
    skip = {k for k, v in model.state_dict().items() if ".weight_quant." in k}
    skip |= {k.replace("weight_quant.codes", "weight") for k in skip}
    content += sum(v.numel() * v.element_size() for k, v in model.state_dict().items()
                   if k not in skip)
    # the tiny model has ~1 KB of content: the header (config included) stays under 1 KB
    assert content < path.stat().st_size <= content + 1024
    assert path.stat().st_size < ckpt.stat().st_size / 3


def test_header_keeps_what_rebuilds_the_model_not_how_it_was_trained(
        ternary: tuple[Path, Path]) -> None:
    ckpt, path = ternary
    header = read_header(load_file(path), path)
    assert set(header["config"]) == {"model", "quant", "data"}
    assert header["config"]["quant"] == load_model(ckpt)[1]["config"]["quant"]


def test_files_are_shareable(ternary: tuple[Path, Path]) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    for path in ternary:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def _rewrite(src: Path, dst: Path, edit, fix_digest: bool) -> Path:
    tensors = load_file(src)
    raw = src.read_bytes()
    metadata = dict(json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"])
    edit(tensors, metadata)
    if fix_digest:
        metadata[SUM_KEY] = digest(tensors, metadata[META_KEY])
    save_file(tensors, dst, metadata=metadata)
    return dst


def _edit_header(change):  # noqa: ANN001, ANN202 - test helper
    def edit(tensors: dict, metadata: dict) -> None:
        header = json.loads(zlib.decompress(tensors["header"].numpy().tobytes()))
        change(header)
        blob = zlib.compress(json.dumps(header).encode())
        tensors["header"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return edit


def _flip_bit(tensors: dict, metadata: dict) -> None:
    tensors["codes"] = tensors["codes"].clone()
    tensors["codes"][3] ^= 4


def _set_layer(i: int, value: object):  # noqa: ANN202
    return _edit_header(lambda h: h["layers"][0].__setitem__(i, value))


_TAMPERING = {
    "flipped bit": (_flip_bit, "integrity"),
    "bits": (_set_layer(1, 3), "integrity"),
    "shape": (_set_layer(2, [2, 2]), "integrity"),
    "missing key": (lambda t, m: t.pop("values.float32"), "integrity"),
}
_FORGED = {  # the same edits with a recomputed digest: caught by the structural checks
    "bits": (_set_layer(1, 3), "stored at 3 bits"),
    "shape": (_set_layer(2, [2, 2]), "does not fit"),
    "layer name": (_set_layer(0, "nope"), "bad layer entry"),
    "missing key": (lambda t, m: t.pop("values.float32"), "missing or too short"),
    "config list": (_edit_header(lambda h: h.__setitem__("config", [1])), "'config' is a JSON"),
    "no dataset": (_edit_header(lambda h: h.pop("dataset")), "'dataset' is missing"),
    "layers string": (_edit_header(lambda h: h.__setitem__("layers", "x")), "layout object"),
    "bad config": (_edit_header(lambda h: h["config"].__setitem__("model", 3)), "config"),
    "meta list": (lambda t, m: m.__setitem__(META_KEY, "[1]"), "JSON list"),
    "nan": (lambda t, m: t["values.float32"].__setitem__(0, float("nan")), "NaN"),
    "codec": (_edit_header(lambda h: h.__setitem__("codec", "zstd")), "unknown codes codec"),
    "bad entropy": (_edit_header(lambda h: h.__setitem__("codec", "lzma")), "corrupt|hold"),
}


@pytest.mark.parametrize("case", sorted(_TAMPERING))
def test_tampered_file_is_refused_by_its_digest(case: str, ternary: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    edit, message = _TAMPERING[case]
    bad = _rewrite(ternary[1], tmp_path / "bad.lowbit", edit, fix_digest=False)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", sorted(_FORGED))
def test_forged_file_is_refused_by_its_checks(case: str, ternary: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    edit, message = _FORGED[case]
    bad = _rewrite(ternary[1], tmp_path / "bad.lowbit", edit, fix_digest=True)
    with pytest.raises(LowbitError, match=message) as info:
        load_model(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_cli_reports_a_tampered_file_in_one_line(ternary: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = _rewrite(ternary[1], tmp_path / "bad.lowbit", _flip_bit, fix_digest=False)
    assert main(["eval", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "integrity" in err and len(err.splitlines()) == 1


def test_truncated_and_old_packed_files(ternary: tuple[Path, Path], tmp_path: Path) -> None:
    short = tmp_path / "short.lowbit"
    short.write_bytes(ternary[1].read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(short)
    old = _rewrite(ternary[1], tmp_path / "old.lowbit",
                   lambda t, m: m.__setitem__(META_KEY, '{"format": "lowbit-packed/1"}'), True)
    with pytest.raises(CheckpointError, match="export it again"):
        load_model(old)
    with pytest.raises(CheckpointError, match="not a lowbit packed"):
        load_packed(ternary[0])
