"""Multiple-choice knapsack against exhaustive search."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.study.knapsack import monotone_in_bits, solve_knapsack

CHOICES = (1, 2, 4, 8)


def brute_force(costs: dict[str, dict[int, int]], sens: dict[str, dict[int, float]],
                capacity: int) -> float:
    best = float("inf")
    for combo in itertools.product(CHOICES, repeat=len(costs)):
        if sum(costs[k][b] for k, b in zip(costs, combo, strict=True)) <= capacity:
            best = min(best, sum(sens[k][b] for k, b in zip(costs, combo, strict=True)))
    return best


def weights_only(elements: dict[str, int]) -> dict[str, dict[int, int]]:
    return {k: {b: n * b for b in CHOICES} for k, n in elements.items()}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=5), st.data())
def test_knapsack_is_optimal(sizes: list[int], data: st.DataObject) -> None:
    elements = {f"l{i}": n * 9 for i, n in enumerate(sizes)}
    sens = {k: {b: data.draw(st.floats(0, 10)) for b in CHOICES} for k in elements}
    low, high = sum(elements.values()), 8 * sum(elements.values())
    capacity = data.draw(st.integers(low, high))
    costs = weights_only(elements)
    result = solve_knapsack(costs, sens, capacity)
    assert result.exact
    assert result.used_bits == sum(elements[k] * b for k, b in result.bits.items())
    assert result.used_bits <= capacity
    assert result.cost == pytest.approx(brute_force(costs, sens, capacity))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_knapsack_is_optimal_when_fewer_bits_can_cost_more(data: st.DataObject) -> None:
    """Per-channel scales can make 2 bits dearer than 4 (depthwise ternary): any costs work."""
    layers = data.draw(st.integers(1, 4))
    costs = {f"l{i}": {b: data.draw(st.integers(1, 400)) for b in CHOICES} for i in range(layers)}
    sens = {k: {b: data.draw(st.floats(0, 10)) for b in CHOICES} for k in costs}
    low = sum(min(c.values()) for c in costs.values())
    capacity = data.draw(st.integers(low, sum(max(c.values()) for c in costs.values())))
    result = solve_knapsack(costs, sens, capacity)
    assert result.used_bits == sum(costs[k][b] for k, b in result.bits.items()) <= capacity
    assert result.cost == pytest.approx(brute_force(costs, sens, capacity))


def test_coarse_grid_still_fits() -> None:
    elements = {f"l{i}": 1000 + 7 * i for i in range(6)}
    sens = {k: {b: 1.0 / b + i for b in CHOICES} for i, k in enumerate(elements)}
    capacity = 3 * sum(elements.values()) + 5
    result = solve_knapsack(weights_only(elements), sens, capacity, max_cells=500)
    assert not result.exact
    assert result.used_bits <= capacity


def test_infeasible_budget() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        solve_knapsack({"a": {1: 100, 2: 200}}, {"a": {1: 0.0, 2: 0.0}}, 99)


def test_monotone_sensitivities_fill_the_budget() -> None:
    elements = {"a": 90, "b": 90}
    noisy = {"a": {1: 0.5, 2: 0.7, 4: 0.1, 8: 0.2}, "b": {1: -0.1, 2: 0.0, 4: 0.0, 8: 0.3}}
    sens = monotone_in_bits(noisy)
    assert sens["a"] == {8: 0.1, 4: 0.1, 2: 0.5, 1: 0.5}
    assert sens["b"] == {8: -0.1, 4: -0.1, 2: -0.1, 1: -0.1}
    result = solve_knapsack(weights_only(elements), sens, 90 * 12)
    assert result.bits == {"a": 4, "b": 8}  # ties go to more bits: the budget is used
