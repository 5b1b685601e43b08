"""Every recipe re-estimates BatchNorm statistics with the final weights when training ends."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.engine import LoopState
from lowbit.models import create_model
from lowbit.recipes import parse_quant_section


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10),
                         nn.Linear(10, 10))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 6, 6, generator=g) * 3 + 1, torch.zeros(4)) for _ in range(n)]


@pytest.mark.parametrize("method", ["qat", "lbw", "inq", "gdrq"])
@pytest.mark.parametrize("batches", [0, 3])
def test_fit_end_re_estimates_batchnorm_with_the_final_weights(method: str, batches: int) -> None:
    torch.manual_seed(0)
    recipe = parse_quant_section({"method": method, "bn_recalibration_batches": batches})
    model = recipe.prepare(_net())
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_mean.fill_(123.0)  # stale: what oscillating weights leave behind
    recipe.on_fit_end(LoopState(model, batches=_batches))
    if batches == 0:
        assert torch.all(bn.running_mean == 123.0)
        return
    # the cumulative average over the batches of the final model's BN inputs (GDRQ's activation
    # ranges move with the batches in train mode, hence its looser tolerance)
    model.eval()
    feats = []
    with torch.no_grad():
        for x, _ in _batches(batches):
            h = x
            for layer in model:
                if layer is bn:
                    break
                h = layer(h)
            feats.append(h.mean(dim=(0, 2, 3)))
    rtol, atol = (1e-2, 0.05) if method == "gdrq" else (1e-4, 1e-5)
    torch.testing.assert_close(bn.running_mean, torch.stack(feats).mean(0), rtol=rtol, atol=atol)
    assert bn.num_batches_tracked.item() == batches


def test_groupnet_re_estimates_every_bases_batchnorm() -> None:
    torch.manual_seed(0)
    recipe = parse_quant_section({"method": "groupnet", "bases": 2, "bn_recalibration_batches": 2})
    model = recipe.prepare(create_model("resnet20", width=0.25))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.running_mean.fill_(123.0)
    batches = [(torch.randn(4, 3, 16, 16), torch.zeros(4)) for _ in range(2)]
    recipe.on_fit_end(LoopState(model, batches=lambda n: batches[:n]))
    assert all(bn.num_batches_tracked.item() == 2 for bn in bns)
    assert all(bool((bn.running_mean.abs() < 50).all()) for bn in bns)
