"""Tests of the RSA correlations, with scipy as the oracle."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from dimalign.analysis.rsa import ConstantInputError, correlate_vectors, rsa, upper_triangle


def symmetric_matrix(rng: np.random.Generator, size: int, decimals: int | None = None) -> np.ndarray:
    values = rng.normal(size=(size, size))
    if decimals is not None:
        values = np.round(values, decimals)  # produce ties
    matrix = np.triu(values, 1)
    return matrix + matrix.T


def test_upper_triangle_row_order():
    matrix = np.arange(16.0).reshape(4, 4)

    np.testing.assert_array_equal(upper_triangle(matrix), [1, 2, 3, 6, 7, 11])
    np.testing.assert_array_equal(upper_triangle(matrix, k=0)[:4], [0, 1, 2, 3])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pearson_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    first, second = symmetric_matrix(rng, 30), symmetric_matrix(rng, 30)
    rows, columns = np.triu_indices(30, k=1)

    expected = pearsonr(first[rows, columns], second[rows, columns])[0]

    assert rsa(first, second) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_with_ties_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    first, second = symmetric_matrix(rng, 25, decimals=1), symmetric_matrix(rng, 25, decimals=1)
    rows, columns = np.triu_indices(25, k=1)
    assert len(np.unique(first[rows, columns])) < rows.size  # the test needs ties

    expected = spearmanr(first[rows, columns], second[rows, columns])[0]

    assert rsa(first, second, method="spearman") == pytest.approx(expected, rel=1e-12)


def test_spearman_is_rank_based():
    assert correlate_vectors([1, 2, 3, 4, 100], [1, 2, 3, 4, 5], method="spearman") == 1.0
    assert correlate_vectors([1, 2, 3, 4, 100], [1, 2, 3, 4, 5], method="pearson") < 0.8


def test_identity_and_sign():
    rng = np.random.default_rng(7)
    matrix = symmetric_matrix(rng, 12)

    assert rsa(matrix, matrix) == pytest.approx(1.0, abs=1e-15)
    assert rsa(matrix, -matrix, method="spearman") == pytest.approx(-1.0, abs=1e-15)


def test_only_upper_triangle_is_used():
    rng = np.random.default_rng(8)
    first, second = symmetric_matrix(rng, 10), symmetric_matrix(rng, 10)
    changed = second.copy()
    changed[np.tril_indices(10)] = rng.normal(size=55)

    assert rsa(first, changed) == rsa(first, second)


def test_nan_at_different_positions_named():
    first = np.ones((4, 4)) + np.arange(16.0).reshape(4, 4)
    second = first.T + first
    first[0, 2] = np.nan
    second[1, 3] = np.nan

    with pytest.raises(ValueError, match=r"first input has NaN at \(row, column\) \[\(0, 2\)\]") as error:
        rsa(first, second, nan_policy="omit")
    assert "(1, 3)" in str(error.value)


def test_nan_at_same_positions_raises_by_default():
    rng = np.random.default_rng(9)
    first, second = symmetric_matrix(rng, 6), symmetric_matrix(rng, 6)
    first[1, 4] = second[1, 4] = np.nan

    with pytest.raises(ValueError, match=r"nan_policy='omit'"):
        rsa(first, second)


def test_nan_omit_drops_pairs_and_warns():
    rng = np.random.default_rng(10)
    first, second = symmetric_matrix(rng, 6), symmetric_matrix(rng, 6)
    rows, columns = np.triu_indices(6, k=1)
    keep = ~((rows == 1) & (columns == 4))
    expected = pearsonr(first[rows, columns][keep], second[rows, columns][keep])[0]
    first[1, 4] = second[1, 4] = np.nan

    with pytest.warns(RuntimeWarning, match="dropped 1 of 15"):
        value = rsa(first, second, nan_policy="omit")

    assert value == pytest.approx(expected, rel=1e-12)


def test_constant_input_is_undefined():
    with pytest.raises(ValueError, match="second input is constant.*undefined"):
        correlate_vectors([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])
    with pytest.raises(ValueError, match="first input is constant"):
        rsa(np.ones((4, 4)), np.arange(16.0).reshape(4, 4), method="spearman")


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 3\) and \(4, 4\)"):
        rsa(np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match=r"\(3,\) and \(4,\)"):
        correlate_vectors([1, 2, 3], [1, 2, 3, 4])


def test_non_square_rejected():
    with pytest.raises(ValueError, match=r"must be square, got shape \(3, 4\)"):
        rsa(np.ones((3, 4)), np.ones((3, 4)))


def test_invalid_options_rejected():
    with pytest.raises(ValueError, match="invalid correlation method 'kendall'"):
        rsa(np.eye(3), np.eye(3), method="kendall")
    with pytest.raises(ValueError, match="invalid nan_policy"):
        correlate_vectors([1, 2, 3], [3, 1, 2], nan_policy="propagate")


def test_infinite_values_rejected():
    with pytest.raises(ValueError, match=r"contains inf at indices \[1\]"):
        correlate_vectors([1.0, np.inf, 3.0], [1.0, 2.0, 3.0])


def test_too_few_values_rejected():
    with pytest.raises(ValueError, match="at least 2 value pairs"):
        rsa(np.eye(2), np.eye(2))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rsa_rejects_constant_within_rounding(dtype):
    from dimalign.analysis.similarity import similarity_matrix

    human = similarity_matrix(np.random.default_rng(0).gamma(1.0, size=(30, 3)))
    # Every off-diagonal value is 1/3, but the sums leave differences in the last bits.
    flat = similarity_matrix(np.zeros((30, 3)), dtype=dtype)
    assert np.ptp(upper_triangle(flat)) > 0
    with pytest.raises(ConstantInputError, match="the second input is constant"):
        rsa(human, flat)


def test_correlate_vectors_small_spread_is_not_constant():
    # A spread of 1e-9 on values near 1 is far above rounding, so the correlation exists.
    assert correlate_vectors([1.0, 1.0 + 1e-9, 1.0 + 2e-9], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_correlate_vectors_extreme_scale(scale):
    # r of [0, 0, 1] with [1, 2, 3] is 1 / sqrt(4/3) = sqrt(3) / 2, for any positive scale.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = correlate_vectors([0.0, 0.0, scale], [1, 2, 3])
    assert r == pytest.approx(np.sqrt(3) / 2, abs=1e-15)


@pytest.mark.parametrize("offset", [2.0**27, 2.0**33])
def test_pearson_large_offset_matches_scipy(offset):
    # offset + x is exact for these x (multiples of 1/64 below 1024), so the
    # shifted values are the same data and r must agree with scipy on x alone.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 1024 * 64, size=200) / 64
    y = x + 300 * rng.random(200)
    assert np.array_equal((offset + x) - offset, x)
    expected = pearsonr(x, y)[0]
    assert correlate_vectors(offset + x, y) == pytest.approx(expected, abs=1e-13)


def test_pearson_near_float_maximum_both_signs():
    # x - mean overflows here, so scipy.stats.pearsonr returns NaN for these values.
    values = np.array([1.7e308, -1.7e308, 1e308, 0.5e308])
    expected = pearsonr(values / 1e308, np.arange(4.0))[0]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = correlate_vectors(values, np.arange(4.0))

    assert r == pytest.approx(expected, abs=1e-15)
