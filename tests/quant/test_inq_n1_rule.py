"""INQ's n1 rule: the paper's max rule, and the least-squares option."""

import pytest
import torch

from lowbit.quant import functional as F
from lowbit.quant.inq import INQWeight


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_mse_rule_picks_the_least_squares_top_exponent(bits: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3) * 0.05
    w[0, 0, 0, 0] = 0.4  # one outlier: the max rule puts every level far above the bulk
    quantized = {}
    for rule in ("max", "mse"):
        q = INQWeight(bits=bits, n1_rule=rule)
        q.partition(w.clone(), 1.0)
        quantized[rule] = (int(q.n1), q.frozen.clone())
    n1_max, q_max = quantized["max"]
    n1_mse, q_mse = quantized["mse"]
    assert n1_max == F.pow2_top_exponent(0.4) and n1_mse < n1_max
    err = {k: float((v - w).square().sum()) for k, (_, v) in quantized.items()}
    assert err["mse"] < err["max"]
    # the chosen n1 is the best of every candidate exponent (brute force)
    brute = min(range(n1_max - 6, n1_max + 1),
                key=lambda c: (float((F.pow2_quantize(w, bits, c) - w).square().sum()), -c))
    assert n1_mse == brute
    assert float((q_mse == 0).float().mean()) < float((q_max == 0).float().mean())
    # still INQ's codebook: zero or a power of two inside the window
    nz = q_mse[q_mse != 0].abs()
    exps = torch.log2(nz)
    assert torch.equal(exps, exps.round()) and exps.max() <= n1_mse
    assert exps.min() >= n1_mse + 1 - 2 ** (bits - 2)


def test_n1_rule_is_validated_and_round_trips() -> None:
    with pytest.raises(ValueError, match="n1_rule"):
        INQWeight(bits=3, n1_rule="median")
    assert INQWeight(bits=3, n1_rule="mse").to_config()["n1_rule"] == "mse"
