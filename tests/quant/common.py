"""What the quantizer maths tests share: hypothesis strategies and the relative error."""

from __future__ import annotations

import hypothesis.strategies as st
import torch

small = st.floats(-10, 10, width=32, allow_subnormal=False)
# Magnitudes from a short list make ties likely.
tied = st.sampled_from([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0])


def rel_err(w: torch.Tensor, q: torch.Tensor) -> float:
    """||w - q||^2 / ||w||^2 in float64."""
    return float(((w.double() - q.double()) ** 2).sum() / (w.double() ** 2).sum())
