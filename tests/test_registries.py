"""Tests that walk the registries: every model x every weight quantizer, every quantizer's
state loading from a float checkpoint. A new registration is covered by registering it."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.models import create_model, list_models
from lowbit.quant import list_quantizers
from lowbit.registry import Registry
from lowbit.transform import every_layer_rules, quantize_model

# activation-only quantizers and those that need arguments to act on weights
WEIGHT_QUANTIZERS = [q for q in list_quantizers() if q not in ("sign",)]


@pytest.mark.parametrize("quantizer", WEIGHT_QUANTIZERS)
@pytest.mark.parametrize("model_name", list_models())
def test_every_model_trains_with_every_weight_quantizer(model_name: str, quantizer: str) -> None:
    torch.manual_seed(0)
    model = create_model(model_name, width=0.25)
    size = int(getattr(model, "min_input_size", 32))
    qmodel = quantize_model(model, weight={"name": quantizer}).model.train()
    x = torch.randn(2, 3, size, size)
    out = qmodel(x)
    out.float().sum().backward()
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    grads = [p.grad for p in qmodel.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("quantizer", list_quantizers())
def test_a_float_checkpoint_loads_strictly_into_a_quantized_model(quantizer: str) -> None:
    torch.manual_seed(0)
    float_model = create_model("small_cnn", width=0.25)
    spec = {"weight": {"name": quantizer}} if quantizer != "sign" else {"act": {"name": "sign"}}
    qmodel = quantize_model(float_model, every_layer_rules(float_model, spec)).model
    qmodel.load_state_dict(float_model.state_dict(), strict=True)  # raises on a missing key
    for key, value in float_model.state_dict().items():
        assert torch.equal(qmodel.state_dict()[key], value), key
    # a quantized model's own state still round-trips, and a partial one is still an error
    own = qmodel.state_dict()
    qmodel.load_state_dict(own, strict=True)
    quant_keys = [k for k in own if "_quant." in k]
    if len(quant_keys) > 1:
        broken = {k: v for k, v in own.items() if k != quant_keys[0]}
        with pytest.raises(RuntimeError, match="Missing key"):
            qmodel.load_state_dict(broken, strict=True)


def test_registry_refuses_duplicates_and_names_choices() -> None:
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(LowbitError, match="thing 'a' is already registered"):
        reg.add("a", 2)
    with pytest.raises(LowbitError, match=r"unknown thing 'b'; choose one of a"):
        reg.get("b")
    with pytest.raises(LowbitError, match=r"unknown thing \['a'\]"):
        reg.get(["a"])  # unhashable names are a clear error too
    reg.add("c", 3)
    assert reg.names(lambda n, v: v > 1) == ["c"] and "a" in reg and len(reg) == 2


@pytest.mark.parametrize("quantizer", [q for q in list_quantizers() if q not in ("inq", "sign")])
def test_declared_capabilities_match_behaviour(quantizer: str) -> None:
    """Downstream code trusts `linear_codes`, `enabled` and `frozen_clip`: they must be true."""
    from lowbit.quant import get_quantizer

    q = get_quantizer({"name": quantizer})
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    q.train()
    q(w)  # trackers (EMA clips) see one batch
    q.eval()
    codes, scale = q.encode(w)
    linear = torch.allclose(q.decode(codes, scale), codes.to(w.dtype) * scale.reshape(
        -1, *([1] * (w.dim() - 1))) if scale.dim() == 1 and scale.numel() > 1 else
        codes.to(w.dtype) * scale)
    assert q.linear_codes == linear
    assert q.enabled
    if quantizer == "scaleclip":
        q.set_enabled(False)
        assert not q.enabled and not q.quantize
    else:
        with pytest.raises(ValueError, match="no clip-only mode"):
            q.set_enabled(False)
    try:
        t = q.frozen_clip(torch.float64)
    except ValueError as exc:
        assert str(exc)  # the reason is said
    else:
        assert t.dim() == 0 and t.dtype == torch.float64 and t > 0
