import itertools

import numpy as np
import pytest
import torch

from dimalign.embedding.likelihood import (
    accuracy_with_ties,
    choice_log_probabilities,
    hits_with_ties,
    triplet_nll,
)


def shifted_reference_nll(embedding, triplet):
    """NLL of the recorded choice computed with an explicit max shift in float64."""
    y = np.asarray(embedding, dtype=np.float64)
    i, j, k = triplet
    logits = np.array([y[i] @ y[j], y[i] @ y[k], y[j] @ y[k]])
    shift = logits.max()
    return float(np.log(np.exp(logits - shift).sum()) + shift - logits[0])


@pytest.mark.parametrize(("scale", "dtype"), [(1.0, torch.float32), (3.0, torch.float64)])
def test_nll_finite_for_large_dot_products(scale, dtype):
    embedding = torch.tensor([[10.0], [9.5], [9.0]], dtype=dtype) * scale
    triplets = torch.tensor([[0, 1, 2]])
    value = triplet_nll(embedding, triplets)
    assert torch.isfinite(value).all()
    expected = shifted_reference_nll(embedding.numpy(), (0, 1, 2))
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    assert float(value[0]) == pytest.approx(expected, abs=tolerance)


def test_choice_probability_analytical():
    embedding = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=torch.float64)
    probabilities = choice_log_probabilities(embedding, torch.tensor([[0, 1, 2]])).exp()
    # dot products: s01 = 0.9, s02 = 0, s12 = 0.1
    expected = np.exp(0.9) / (np.exp(0.9) + np.exp(0.0) + np.exp(0.1))
    assert float(probabilities[0, 0]) == pytest.approx(expected, abs=1e-12)
    assert float(probabilities[0, 0]) > 1 / 3


def test_all_zero_embedding_scores_one_third():
    embedding = torch.zeros(5, 3)
    triplets = torch.tensor([[0, 1, 2], [2, 3, 4], [4, 0, 1]])
    hits = hits_with_ties(choice_log_probabilities(embedding, triplets))
    assert hits.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert float(hits.mean()) == pytest.approx(1 / 3)


def test_two_way_tie_counts_half():
    probabilities = torch.tensor([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4]])
    assert hits_with_ties(probabilities).tolist() == [0.5, 0.0]


def all_ordered_triplets(n_objects):
    return np.array(list(itertools.permutations(range(n_objects), 3)))


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3, 1e150])
def test_log_probabilities_equal_float64_brute_force(scale):
    # At scale 1e150 the dot products are near 1e300, which exp() and any
    # unshifted sum of exponentials overflow.
    embedding = np.random.default_rng(0).random((6, 4)) * scale
    triplets = all_ordered_triplets(6)
    expected = np.array([-shifted_reference_nll(embedding, row) for row in triplets])

    log_probabilities = choice_log_probabilities(torch.tensor(embedding), torch.tensor(triplets))
    nll = triplet_nll(torch.tensor(embedding), torch.tensor(triplets))

    assert torch.isfinite(log_probabilities).all()
    np.testing.assert_allclose(log_probabilities[:, 0].numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(nll.numpy(), -expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_probabilities.exp().sum(dim=1).numpy(), 1.0, rtol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 10.0, 60.0])
def test_float32_log_probabilities_near_float64(scale):
    # float32 rounds each dot product s by about n_dims * eps * |s|, and the
    # log-probability inherits that absolute error. Scale 60 gives dot
    # products near 10,000, far beyond exp()'s float32 range of about 88.
    embedding = np.random.default_rng(1).random((6, 3)) * scale
    embedding32 = embedding.astype(np.float32)
    triplets = all_ordered_triplets(6)
    expected = np.array([-shifted_reference_nll(embedding32, row) for row in triplets])
    largest_dot = float((embedding32.astype(np.float64) @ embedding32.T.astype(np.float64)).max())
    tolerance = 4 * 3 * float(np.finfo(np.float32).eps) * max(largest_dot, 1.0)

    log_probabilities = choice_log_probabilities(torch.tensor(embedding32), torch.tensor(triplets))

    assert log_probabilities.dtype == torch.float32
    assert torch.isfinite(log_probabilities).all()
    np.testing.assert_allclose(log_probabilities[:, 0].double().numpy(), expected, rtol=0, atol=tolerance)


def test_accuracy_with_ties_exact():
    from fractions import Fraction

    third = 1 / 3
    # Hits: 1/2 (two tied pairs, the recorded one among them), 0, 1/3 and 1.
    probabilities = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [third, third, third], [0.6, 0.3, 0.1]])

    assert accuracy_with_ties(probabilities) == float(Fraction(11, 24))
    assert accuracy_with_ties(probabilities.log()) == float(Fraction(11, 24))
    assert accuracy_with_ties(torch.zeros((9, 3))) == 1 / 3
