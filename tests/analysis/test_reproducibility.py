"""Tests of split-half reproducibility across runs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr

from dimalign.analysis.reproducibility import (
    R_CLIP,
    fisher_mean,
    reproducibility,
    split_halves,
)


def sparse_embedding(n_objects=60, n_dims=5, seed=0):
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(size=(n_objects, n_dims)), 0.0)


def test_permuted_runs_reproduce_at_clip():
    embedding = sparse_embedding()
    permuted = embedding[:, [3, 0, 4, 1, 2]]
    result = reproducibility([embedding, permuted])

    # Every held-out r is 1 (up to rounding), clipped to R_CLIP before arctanh;
    # tanh(arctanh(R_CLIP)) gives R_CLIP back, so each score is R_CLIP.
    for score in result.run_scores:
        assert abs(score - R_CLIP) < 1e-9
    for scores in result.dim_scores:
        assert np.all(np.abs(scores - R_CLIP) < 1e-9)
    assert result.run_scores.max() < 1.0


def test_reproducibility_matches_manual_computation():
    rng = np.random.default_rng(1)
    first = sparse_embedding(seed=2)
    second = np.column_stack([first[:, 1] + 0.5 * rng.random(60), rng.random(60), first[:, 0] + 0.2 * rng.random(60)])
    third = rng.random((60, 2))
    result = reproducibility([first, second, third])
    even, odd = np.arange(0, 60, 2), np.arange(1, 60, 2)

    # Dimension 0 of run 0, by hand: partner chosen on even rows, scored on odd rows.
    held_out = []
    for other in (second, third):
        choosing = [pearsonr(first[even, 0], other[even, j])[0] for j in range(other.shape[1])]
        partner = int(np.argmax(choosing))
        held_out.append(pearsonr(first[odd, 0], other[odd, partner])[0])
    expected = np.tanh(np.mean(np.arctanh(held_out)))

    assert result.dim_scores[0][0] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(result.pair_correlations[0][0, 1:], held_out, atol=1e-12)
    assert np.isnan(result.pair_correlations[0][0, 0])
    assert result.run_scores[0] == pytest.approx(result.dim_scores[0].mean())


def test_best_run_is_most_reproducible():
    base = sparse_embedding(seed=3)
    rng = np.random.default_rng(4)
    runs = [
        base + 0.05 * rng.random(base.shape),
        base + 0.05 * rng.random(base.shape),
        rng.random(base.shape),
    ]
    result = reproducibility(runs)
    assert result.best_run in (0, 1)
    assert result.run_scores[2] < result.run_scores[0]


def test_zero_variance_dimension_scores_zero():
    embedding = sparse_embedding(seed=5)
    with_constant = np.column_stack([embedding, np.zeros(60)])
    with pytest.warns(UserWarning, match="zero variance"):
        result = reproducibility([with_constant, embedding])
    scores = result.dim_scores[0]
    assert not np.isnan(scores).any()
    assert scores[-1] == 0.0


def test_dimension_constant_on_first_half_scores_zero():
    # Column 1 is zero on the even objects (the first half) but varies on the
    # odd ones, so it has no partner and must not borrow dimension 0's.
    rng = np.random.default_rng(0)
    run = rng.random((12, 2))
    run[0::2, 1] = 0.0
    other = rng.random((12, 2))
    with pytest.warns(UserWarning, match="zero variance"):
        result = reproducibility([run, other])
    assert result.pair_correlations[0][1, 1] == 0.0
    assert result.pair_correlations[0][0, 1] != 0.0


def test_partner_constant_on_first_half_not_chosen():
    # The other run's column 1 is constant on the first half and equals the
    # reference on the second half. Column 0 correlates negatively on both
    # halves. The partner must be column 0, chosen on the first half, so the
    # held-out score is column 0's negative correlation, not r = 1.
    rng = np.random.default_rng(1)
    reference = rng.random((20, 1))
    other = np.column_stack([-reference[:, 0] + 0.3 * rng.random(20), reference[:, 0]])
    other[0::2, 1] = 0.5
    with pytest.warns(UserWarning, match="zero variance"):
        result = reproducibility([reference, other])
    odd = np.arange(1, 20, 2)
    expected = pearsonr(reference[odd, 0], other[odd, 0])[0]
    assert expected < 0
    assert result.pair_correlations[0][0, 1] == pytest.approx(expected, abs=1e-12)


def test_random_split_is_recorded_and_seeded():
    first, second = split_halves(11, "random", random_state=3)
    again_first, _ = split_halves(11, "random", random_state=3)
    np.testing.assert_array_equal(first, again_first)
    assert first.size == 5
    assert second.size == 6
    assert sorted(np.concatenate([first, second]).tolist()) == list(range(11))

    embedding = sparse_embedding()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = reproducibility([embedding, embedding[:, ::-1]], split="random", random_state=3)
    assert result.split["method"] == "random"
    assert result.split["random_state"] == 3


def test_fisher_mean_values():
    assert fisher_mean(np.array([0.5, 0.5])) == pytest.approx(0.5, abs=1e-15)
    assert fisher_mean(np.array([0.3, -0.3])) == pytest.approx(0.0, abs=1e-15)
    assert fisher_mean(np.array([1.0])) == pytest.approx(R_CLIP, abs=1e-15)


def test_reproducibility_rejects_one_run():
    with pytest.raises(ValueError, match="at least two runs"):
        reproducibility([sparse_embedding()])


def test_reproducibility_rejects_different_objects():
    with pytest.raises(ValueError, match="same objects"):
        reproducibility([sparse_embedding(), sparse_embedding(n_objects=50)])


def test_split_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown split method"):
        split_halves(10, "halves")


def test_run_without_dimensions():
    embedding = sparse_embedding()
    with pytest.warns(UserWarning, match="kept 0 dimensions"):
        result = reproducibility([embedding, np.zeros((60, 0)), embedding[:, ::-1]])
    assert np.isnan(result.run_scores[1])
    assert result.dim_scores[1].size == 0
    # Run 0's partners: run 1 contributes r = 0, run 2 r = 1 (clipped).
    expected = np.tanh((np.arctanh(0.0) + np.arctanh(R_CLIP)) / 2)
    np.testing.assert_allclose(result.dim_scores[0], expected, atol=1e-12)
    assert result.best_run in (0, 2)


def test_no_run_with_dimensions():
    with pytest.warns(UserWarning, match="kept 0 dimensions"):
        result = reproducibility([np.zeros((10, 0)), np.zeros((10, 0))])
    with pytest.raises(ValueError, match="no run has any dimension"):
        result.best_run


def test_run_folders_score_like_their_arrays(tmp_path):
    from dimalign.io.runs import EmbeddingResult, save_embedding

    rng = np.random.default_rng(0)
    arrays = [rng.gamma(1.0, size=(40, 3)).astype(np.float32) for _ in range(3)]  # as saved
    folders = [save_embedding(EmbeddingResult(array), tmp_path / f"seed_{index}") for index, array in enumerate(arrays)]
    from_folders = reproducibility([tmp_path / "seed_0", str(tmp_path / "seed_1"), folders[2]])
    np.testing.assert_allclose(from_folders.run_scores, reproducibility(arrays).run_scores)


def test_reproducibility_rejects_nan_run():
    first = sparse_embedding(seed=1)
    second = sparse_embedding(seed=2)
    second[7, 3] = np.nan
    with pytest.raises(ValueError, match="run 1 contains NaN or inf in 1 weights, the first at object 7, dimension 3"):
        reproducibility([first, second])


def test_reproducibility_near_float_maximum():
    # Weights of both signs near the float maximum have an infinite range,
    # which is not constant and must not raise a numpy overflow warning.
    rng = np.random.default_rng(7)
    first = rng.uniform(-1.0, 1.0, (12, 3))
    second = np.clip(first + 0.1 * rng.standard_normal((12, 3)), -1.0, 1.0)
    expected = reproducibility([first, second]).run_scores

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled = reproducibility([1.7e308 * first, 1.7e308 * second]).run_scores

    np.testing.assert_allclose(scaled, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("scale", [1e200, 1e-300])
def test_reproducibility_ignores_extreme_scale(scale):
    # Pearson r does not depend on a column's scale, so scaled weights that
    # overflow or underflow when squared must score as the unscaled ones.
    first, second = sparse_embedding(seed=5), sparse_embedding(seed=6)
    expected = reproducibility([first, second, first[:, ::-1]]).run_scores
    scaled = reproducibility([first * scale, second, first[:, ::-1]]).run_scores
    np.testing.assert_allclose(scaled, expected, rtol=1e-12, atol=0)
