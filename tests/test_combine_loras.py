"""bench/combine_loras.py and bench/residual_lora.py: stacked factors give
exactly the weighted sum of the adapters' updates."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from combine_loras import combine  # noqa: E402
from residual_lora import stack  # noqa: E402


@pytest.mark.parametrize("mu", [0.0, 0.5, 1.0])
def test_the_combined_update_is_the_weighted_difference(mu):
    import torch

    g = torch.Generator().manual_seed(0)
    key = "base_model.model.layers.0.q_proj.lora_{}.weight"
    d = {key.format("A"): torch.randn(4, 6, generator=g), key.format("B"): torch.randn(5, 4, generator=g)}
    c = {key.format("A"): torch.randn(4, 6, generator=g), key.format("B"): torch.randn(5, 4, generator=g)}
    out = combine(d, c, mu)
    assert out[key.format("A")].shape == (8, 6) and out[key.format("B")].shape == (5, 8)  # rank doubled
    want = (1 + mu) * d[key.format("B")] @ d[key.format("A")] - mu * c[key.format("B")] @ c[key.format("A")]
    torch.testing.assert_close(out[key.format("B")] @ out[key.format("A")], want)
    if mu == 0.0:  # C drops out entirely
        torch.testing.assert_close(out[key.format("B")] @ out[key.format("A")], d[key.format("B")] @ d[key.format("A")])


def test_a_stack_of_three_is_their_weighted_sum():
    import torch

    g = torch.Generator().manual_seed(1)
    key = "base_model.model.layers.0.q_proj.lora_{}.weight"
    loras = [{key.format("A"): torch.randn(2, 6, generator=g), key.format("B"): torch.randn(5, 2, generator=g)}
             for _ in range(3)]
    out = stack(loras, [1.0, 2.0, -0.5])
    assert out[key.format("A")].shape == (6, 6) and out[key.format("B")].shape == (5, 6)
    want = sum(w * t[key.format("B")] @ t[key.format("A")] for t, w in zip(loras, [1.0, 2.0, -0.5]))
    torch.testing.assert_close(out[key.format("B")] @ out[key.format("A")], want)

