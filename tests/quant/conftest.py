"""Fixtures of the quantizer tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def gauss() -> torch.Tensor:
    """200k seeded N(0, 1) samples."""
    return torch.randn(200_000, generator=torch.Generator().manual_seed(0))
