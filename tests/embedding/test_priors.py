import math

import pytest
import torch

from dimalign.embedding.priors import normal_log_prob, spike_slab_log_prob


def test_normal_log_density_far_tail_is_finite():
    value = normal_log_prob(torch.tensor(50.0, dtype=torch.float64), 0.0, 0.25)
    # -0.5 * (50 / 0.25)^2 - log(0.25) - log(sqrt(2 pi)) = -20000 + 1.386294 - 0.918939
    assert float(value) == pytest.approx(-19999.532644, abs=1e-6)


def test_normal_density_at_mode():
    value = normal_log_prob(torch.tensor(0.0), 0.0, 1.0).exp()
    assert float(value) == pytest.approx(0.39894, abs=1e-5)


def test_mixture_equals_log_of_mixture_density():
    weights = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)
    pi, spike, slab = 0.5, 0.25, 2.0
    density = pi * torch.exp(normal_log_prob(weights, 0.0, spike)) + (1 - pi) * torch.exp(
        normal_log_prob(weights, 0.0, slab)
    )
    assert torch.allclose(spike_slab_log_prob(weights, pi, spike, slab), density.log(), atol=1e-12)


def test_mixture_far_tail_follows_slab():
    weight = torch.tensor(50.0, dtype=torch.float64)
    value = spike_slab_log_prob(weight)
    expected = math.log(0.5) + float(normal_log_prob(weight, 0.0, 2.0))
    assert math.isfinite(float(value))
    assert float(value) == pytest.approx(expected, abs=1e-9)


def test_authors_variant_is_one_gaussian_of_sd_035():
    weights = torch.linspace(-2.0, 2.0, 41, dtype=torch.float64)
    value = spike_slab_log_prob(weights, variant="authors")
    precision = 0.5 / 0.25**2 + 0.5 / 2.0**2
    quadratic = value - value[20]  # weights[20] == 0
    assert torch.allclose(quadratic, -0.5 * precision * weights**2, atol=1e-12)
    assert 1 / math.sqrt(precision) == pytest.approx(0.351, abs=1e-3)


def test_unknown_prior_variant_rejected():
    with pytest.raises(ValueError, match="unknown prior variant 'laplace'"):
        spike_slab_log_prob(torch.zeros(2), variant="laplace")
