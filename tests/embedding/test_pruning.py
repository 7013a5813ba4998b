import numpy as np
import pytest
from scipy import stats

from dimalign.embedding.pruning import (
    benjamini_hochberg,
    probability_non_positive,
    spose_kept_dimensions,
    vice_kept_dimensions,
)


def manual_step_up(p_values, alpha):
    order = np.argsort(p_values)
    m = len(p_values)
    passing = np.flatnonzero(p_values[order] <= alpha * np.arange(1, m + 1) / m)
    rejected = np.zeros(m, dtype=bool)
    if passing.size:
        rejected[order[: passing[-1] + 1]] = True
    return rejected


def test_bh_rejects_all_three():
    p_values = np.array([0.01, 0.04, 0.045])
    assert benjamini_hochberg(p_values, 0.05).tolist() == [True, True, True]
    assert (stats.false_discovery_control(p_values) <= 0.05).all()


def test_bh_is_step_up_not_step_down():
    # 0.03 > 1 * 0.05 / 3 fails a step-down test at rank 1, but rank 3 passes
    # (0.05 <= 0.05), so the step-up procedure rejects all three.
    assert benjamini_hochberg(np.array([0.05, 0.03, 0.04]), 0.05).tolist() == [True, True, True]


def test_bh_matches_manual_step_up_on_random_p_values():
    rng = np.random.default_rng(1)
    for _ in range(50):
        p_values = rng.uniform(0, 0.2, size=30) ** 2
        assert np.array_equal(benjamini_hochberg(p_values, 0.05), manual_step_up(p_values, 0.05))


def test_bh_runs_per_column():
    p_values = np.array([[0.01, 0.9], [0.04, 0.9], [0.045, 0.001]])
    assert benjamini_hochberg(p_values, axis=0).tolist() == [[True, False], [True, False], [True, True]]


def test_bh_rejects_invalid_p_values():
    with pytest.raises(ValueError, match="must lie in"):
        benjamini_hochberg(np.array([0.5, 1.5]))


def test_probability_non_positive_at_zero_mean_is_half():
    assert probability_non_positive(np.array([0.0]), np.array([1.0]))[0] == pytest.approx(0.5)


def test_vice_keeps_dimension_with_six_confident_objects():
    loc = np.zeros((20, 3))
    scale = np.ones((20, 3))
    loc[:6, 0] = 10.0  # six objects far above zero
    loc[:5, 1] = 10.0  # only five: not more than min_objects
    assert vice_kept_dimensions(loc, scale, min_objects=5).tolist() == [0]


def test_spose_threshold_pruning():
    weights = np.zeros((10, 2))
    weights[:6, 1] = 0.2
    assert spose_kept_dimensions(weights, threshold=0.1, min_objects=5).tolist() == [1]
