"""Tests of triplet probabilities, odd-one-out accuracy and the predicted similarity matrix."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from tqdm import tqdm

from dimalign.analysis import similarity as similarity_module
from dimalign.analysis.similarity import (
    AccuracyResult,
    choice_log_probabilities,
    choice_probabilities,
    dot_similarity,
    odd_one_out_accuracy,
    similarity_matrix,
    triplet_log_likelihood,
    triplet_logits,
    triplet_nll,
)


def reference_similarity(embedding: np.ndarray) -> np.ndarray:
    """Compute S with a plain triple loop, shifting each triple by its maximum logit."""
    weights = np.asarray(embedding, dtype=np.float64)
    logits = weights @ weights.T
    n_objects = len(weights)
    result = np.ones((n_objects, n_objects))
    for i in range(n_objects):
        for j in range(n_objects):
            if i == j:
                continue
            total = 0.0
            for k in range(n_objects):
                if k in (i, j):
                    continue
                three = np.array([logits[i, j], logits[i, k], logits[j, k]])
                shifted = np.exp(three - three.max())
                total += shifted[0] / shifted.sum()
            result[i, j] = total / (n_objects - 2)
    return result


@pytest.fixture(scope="module")
def human_triplets(things_dir) -> np.ndarray:
    return np.loadtxt(things_dir / "human_triplets.txt", dtype=np.int64)


# -- choice probabilities and likelihood -------------------------------------


def test_choice_probability_hand_computed():
    embedding = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # Triplet (0, 3, 2): s_03 = 1, s_02 = 0, s_32 = 2.
    expected = math.e / (math.e + 1.0 + math.e**2)

    probabilities = choice_probabilities(embedding, [[0, 1, 2], [0, 3, 2]])

    assert probabilities[0] == pytest.approx(math.e / (math.e + 2.0), rel=1e-15)
    assert probabilities[1] == pytest.approx(expected, rel=1e-15)


def test_logits_columns_order():
    embedding = np.array([[1.0, 2.0], [3.0, 0.0], [0.5, 1.0]])

    logits = triplet_logits(embedding, [[0, 1, 2]])

    np.testing.assert_array_equal(logits, [[3.0, 2.5, 1.5]])


def test_probabilities_finite_at_large_scale():
    embedding = np.array([[30.0], [28.5], [27.0]])
    logits = np.array([30 * 28.5, 30 * 27.0, 28.5 * 27.0])
    expected = 1.0 / (1.0 + np.exp(logits[1] - logits[0]) + np.exp(logits[2] - logits[0]))

    probability = choice_probabilities(embedding, [[0, 1, 2]])[0]
    log_probability = choice_log_probabilities(embedding, [[2, 1, 0]])[0]

    assert np.isfinite(probability)
    assert probability == pytest.approx(expected, rel=1e-12)
    assert log_probability == pytest.approx(logits[2] - logits[0], rel=1e-12)


def test_probabilities_of_three_orders_sum_to_one():
    rng = np.random.default_rng(3)
    embedding = rng.gamma(1.0, 1.0, size=(6, 4))
    orders = [[1, 4, 5], [1, 5, 4], [4, 5, 1]]

    total = choice_probabilities(embedding, orders).sum()

    assert total == pytest.approx(1.0, abs=1e-14)


def test_nll_of_zero_embedding_is_log3():
    triplets = [[0, 1, 2], [3, 1, 0], [2, 3, 1]]
    embedding = np.zeros((4, 5))

    assert triplet_nll(embedding, triplets) == pytest.approx(math.log(3.0), rel=1e-15)
    assert triplet_log_likelihood(embedding, triplets, reduction="sum") == pytest.approx(
        -3 * math.log(3.0), rel=1e-15
    )


def test_likelihood_batches_match_single_batch():
    rng = np.random.default_rng(4)
    embedding = rng.gamma(1.0, 1.0, size=(20, 3))
    triplets = np.array([rng.choice(20, size=3, replace=False) for _ in range(101)])

    whole = choice_log_probabilities(embedding, triplets)
    batched = choice_log_probabilities(embedding, triplets, batch_size=7)

    np.testing.assert_array_equal(whole, batched)


def test_likelihood_rejects_invalid_reduction():
    with pytest.raises(ValueError, match="reduction"):
        triplet_log_likelihood(np.ones((3, 1)), [[0, 1, 2]], reduction="median")


# -- odd-one-out accuracy -----------------------------------------------------


def test_accuracy_of_zero_embedding_is_exactly_one_third():
    rng = np.random.default_rng(0)
    triplets = np.array([rng.choice(50, size=3, replace=False) for _ in range(1001)])

    result = odd_one_out_accuracy(np.zeros((50, 4)), triplets, return_ties=True)

    assert result.accuracy == 1 / 3
    assert result.n_ties == 1001
    assert result.n_triplets == 1001


def test_accuracy_two_way_tie_counts_half():
    # s_01 = s_02 = 1 and s_12 = 0: pairs (0, 1) and (0, 2) tie for the maximum.
    embedding = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])

    tied_hit = odd_one_out_accuracy(embedding, [[0, 1, 2]], return_ties=True)
    tied_miss = odd_one_out_accuracy(embedding, [[1, 2, 0]], return_ties=True)

    assert tied_hit == AccuracyResult(accuracy=0.5, n_triplets=1, n_ties=1)
    assert tied_miss == AccuracyResult(accuracy=0.0, n_triplets=1, n_ties=1)


def test_accuracy_without_ties_hand_computed():
    embedding = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    triplets = [[0, 1, 2], [2, 3, 0], [0, 2, 1], [1, 3, 0]]  # hit, hit, miss, miss

    result = odd_one_out_accuracy(embedding, triplets, return_ties=True)

    assert result.accuracy == 0.5
    assert result.n_ties == 0
    assert float(result) == 0.5
    assert odd_one_out_accuracy(embedding, triplets) == 0.5


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("spose_embedding_49d_sorted.txt", 0.659),
        ("spose_embedding_66d_sorted.txt", 0.653),
        ("vice_embedding_42d.npy", 0.645),
        ("vgg16_srf_factors_rank200.npy", 0.452),
    ],
)
def test_accuracy_published_embeddings(things_dir, human_triplets, file_name, expected):
    path = things_dir / file_name
    embedding = np.load(path) if path.suffix == ".npy" else np.loadtxt(path)

    result = odd_one_out_accuracy(embedding, human_triplets, return_ties=True)

    assert round(result.accuracy, 3) == expected
    assert result.n_triplets == len(human_triplets)


def test_out_of_range_index_names_it():
    embedding = np.ones((5, 2))

    with pytest.raises(ValueError, match=r"row 1 has object index 5.*valid indices 0\.\.4"):
        odd_one_out_accuracy(embedding, [[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match="object index -1"):
        choice_probabilities(embedding, [[0, -1, 2]])


def test_unused_objects_are_allowed():
    embedding = np.ones((100, 2))

    assert odd_one_out_accuracy(embedding, [[0, 1, 2]]) == pytest.approx(1 / 3)


def test_repeated_object_rejected():
    with pytest.raises(ValueError, match=r"rows \[1\] name the same object twice"):
        odd_one_out_accuracy(np.ones((4, 1)), [[0, 1, 2], [3, 3, 1]])


def test_empty_triplets_rejected():
    with pytest.raises(ValueError, match="empty"):
        odd_one_out_accuracy(np.ones((4, 1)), np.zeros((0, 3), dtype=int))


def test_nan_embedding_rejected():
    embedding = np.ones((4, 2))
    embedding[2, 1] = np.nan

    with pytest.raises(ValueError, match=r"rows \[2\] contain NaN"):
        odd_one_out_accuracy(embedding, [[0, 1, 3]])


def test_wrong_triplet_shape_rejected():
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        choice_probabilities(np.ones((4, 1)), [[0, 1]])


# -- similarity matrices ------------------------------------------------------


def test_dot_similarity_is_gram_matrix():
    embedding = np.array([[1.0, 2.0], [0.0, 3.0]])

    np.testing.assert_array_equal(dot_similarity(embedding), [[5.0, 6.0], [6.0, 9.0]])


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 64])
def test_similarity_matches_triple_loop(batch_size):
    rng = np.random.default_rng(1)
    embedding = rng.gamma(1.0, 0.7, size=(11, 4))

    result = similarity_matrix(embedding, batch_size=batch_size)

    np.testing.assert_allclose(result, reference_similarity(embedding), rtol=0, atol=1e-12)


def test_similarity_symmetric_with_unit_diagonal():
    rng = np.random.default_rng(2)
    embedding = rng.gamma(1.0, 0.7, size=(9, 3))

    result = similarity_matrix(embedding, batch_size=4)

    np.testing.assert_array_equal(result, result.T)
    np.testing.assert_array_equal(np.diag(result), np.ones(9))


def test_similarity_of_three_objects_is_choice_probability():
    embedding = np.array([[10.0], [9.5], [9.0]])

    similarity = similarity_matrix(embedding)
    probability = choice_probabilities(embedding, [[0, 1, 2]])[0]

    assert similarity[0, 1] == pytest.approx(probability, rel=1e-14)


def test_similarity_float32_large_logits_finite():
    # In float32, exp(95) overflows; the shifted computation must not.
    embedding = np.array([[10.0], [9.5], [9.0]], dtype=np.float32)
    reference = reference_similarity(embedding.astype(np.float64))

    result = similarity_matrix(embedding, dtype="float32")
    probability = choice_probabilities(embedding, [[0, 1, 2]])[0]

    assert result.dtype == np.float32
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, reference, rtol=1e-6, atol=1e-30)
    assert result[0, 1] == pytest.approx(probability, rel=1e-6)


def test_similarity_float64_overflowing_scale():
    # Three times the scale: dot products of 769.5 to 855, where exp overflows float64.
    embedding = np.array([[30.0], [28.5], [27.0]])
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.exp(embedding @ embedding.T)).all()

    result = similarity_matrix(embedding)

    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, reference_similarity(embedding), rtol=1e-12, atol=1e-300)


def test_similarity_wide_logit_range_uses_per_triple_shift(caplog):
    # Dot products span about 800, more than float64 exp(s - max s) can keep normal.
    embedding = np.array([[40.0], [20.0], [0.001], [0.002]])

    with caplog.at_level("DEBUG", logger="dimalign.analysis.similarity"):
        result = similarity_matrix(embedding, batch_size=2)

    assert "1 of 4 blocks needed the per-triple shift" in caplog.text
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, reference_similarity(embedding), rtol=1e-12, atol=1e-300)


def test_similarity_three_shift_levels_agree():
    rng = np.random.default_rng(5)
    embedding = rng.gamma(1.0, 1.0, size=(13, 5))
    logits = torch.as_tensor(embedding @ embedding.T)
    off_diagonal = logits[~torch.eye(13, dtype=torch.bool)]
    global_range = float(off_diagonal.max() - off_diagonal.min())
    silent = tqdm(disable=True)

    shared, n_shared = similarity_module._accumulate_triples(logits, torch.float64, 4, silent)
    per_block, n_mixed = similarity_module._accumulate_triples(
        logits, torch.float64, 4, silent, safe_range=0.9 * global_range
    )
    per_triple, n_forced = similarity_module._accumulate_triples(
        logits, torch.float64, 4, silent, safe_range=-1.0
    )

    assert n_shared == 0
    assert 0 < n_mixed < n_forced
    # 13 objects make blocks of 4, 4, 4 and 1: 20 block triples a <= b <= c,
    # minus the one within the last block, which holds no triple.
    assert n_forced == 19
    torch.testing.assert_close(per_block, shared, rtol=1e-13, atol=0.0)
    torch.testing.assert_close(per_triple, shared, rtol=1e-13, atol=0.0)
    assert torch.equal(shared, shared.triu(1))


def test_similarity_subset_equals_full_submatrix():
    rng = np.random.default_rng(6)
    embedding = rng.gamma(1.0, 0.5, size=(15, 4))
    objects = [7, 0, 3, 3, 14]

    full = similarity_matrix(embedding, batch_size=4)
    subset = similarity_matrix(embedding, objects=objects, batch_size=2)

    np.testing.assert_allclose(subset, full[np.ix_(objects, objects)], rtol=0, atol=1e-14)


def test_similarity_real_embedding_full_vs_subset(things_dir):
    embedding = np.loadtxt(things_dir / "spose_embedding_49d_sorted.txt", max_rows=300)
    objects = np.arange(0, 300, 7)

    full = similarity_matrix(embedding)
    subset = similarity_matrix(embedding, objects=objects)

    np.testing.assert_allclose(subset, full[np.ix_(objects, objects)], rtol=0, atol=1e-13)
    off_diagonal = full[~np.eye(300, dtype=bool)]
    assert off_diagonal.min() > 0.0
    assert off_diagonal.max() < 1.0


def test_similarity_rejects_two_objects():
    with pytest.raises(ValueError, match="at least 3 objects"):
        similarity_matrix(np.ones((2, 3)))


def test_similarity_rejects_invalid_options():
    with pytest.raises(ValueError, match="invalid dtype"):
        similarity_matrix(np.ones((3, 1)), dtype="float16")
    with pytest.raises(ValueError, match="batch_size"):
        similarity_matrix(np.ones((3, 1)), batch_size=0)
    with pytest.raises(ValueError, match=r"object indices \[3\]"):
        similarity_matrix(np.ones((3, 1)), objects=[0, 3])



@pytest.mark.parametrize(
    ("objects", "message"),
    [
        ([0.5, 1], r"objects must be integer object indices, got the value 0\.5 at position 0"),
        ([0, float("nan")], r"objects must be integer object indices, got the value nan at position 1"),
        (np.array([True, False, True, False, True, False]), r"objects must be integer object indices, got dtype bool"),
        ([], r"objects is empty: pass at least one object index, or None for the whole matrix"),
        ([[0, 1], [2, 3]], r"objects must be a 1-D sequence of object indices, got shape \(2, 2\)"),
        (["a"], r"objects must be integer object indices, got dtype <U1"),
    ],
)
def test_similarity_rejects_invalid_object_lists(objects, message):
    """An index list is used as given or rejected, never rounded or read as a mask."""
    with pytest.raises(ValueError, match=message):
        similarity_matrix(np.ones((6, 2)), objects=objects)


def test_similarity_accepts_whole_float_object_indices():
    embedding = np.random.default_rng(4).gamma(1.0, 1.0, size=(30, 2))
    np.testing.assert_array_equal(
        similarity_matrix(embedding, objects=[2.0, 5.0]), similarity_matrix(embedding, objects=[2, 5])
    )


@pytest.mark.parametrize("batch_size", [2.5, "64", True])
def test_similarity_rejects_non_integer_batch_size(batch_size):
    with pytest.raises(ValueError, match=rf"batch_size must be a positive integer, got {batch_size!r}"):
        similarity_matrix(np.ones((3, 1)), batch_size=batch_size)


def test_fractional_triplet_value_named():
    with pytest.raises(ValueError, match=r"triplet row 1, column 2 has the value 2\.5, but object indices must be integers"):
        odd_one_out_accuracy(np.ones((4, 1)), [[0, 1, 2], [0, 1, 2.5]])
    with pytest.raises(ValueError, match=r"triplet row 0, column 0 has the value nan"):
        triplet_nll(np.ones((4, 1)), [[np.nan, 1, 2]])


def test_string_triplets_rejected_with_dtype():
    with pytest.raises(ValueError, match=r"triplets must contain integer object indices, got dtype <U1"):
        odd_one_out_accuracy(np.ones((4, 1)), [["0", "1", "2"]])

def test_similarity_subset_above_tenth_uses_full_matrix(monkeypatch):
    from dimalign.analysis import similarity as similarity_module

    original = similarity_module.similarity_matrix
    calls = []

    def recording(*args, **kwargs):
        calls.append(kwargs.get("objects"))
        return original(*args, **kwargs)

    monkeypatch.setattr(similarity_module, "similarity_matrix", recording)
    embedding = np.random.default_rng(0).gamma(1.0, 1.0, size=(120, 3))
    # 11 of 120 objects: the subset path took longer than the full matrix from
    # about a tenth of the objects on.
    result = original(embedding, objects=np.arange(11))
    assert calls == [None]
    np.testing.assert_allclose(result, original(embedding)[:11, :11], atol=1e-14)
    calls.clear()
    original(embedding, objects=np.arange(9))
    assert calls == []


def test_similarity_accepts_reversed_view():
    """A view with negative strides (emb[:, ::-1], np.flip) is an ordinary array to numpy users."""
    embedding = np.random.default_rng(3).gamma(1.0, 1.0, size=(9, 4))
    view = embedding[::-1, ::-1]

    np.testing.assert_allclose(similarity_matrix(view), similarity_matrix(view.copy()), atol=1e-15, rtol=0)


def test_accuracy_equals_brute_force_with_ties():
    # Small integer weights make exact ties of two and three pairs common.
    rng = np.random.default_rng(5)
    embedding = rng.integers(0, 2, size=(12, 2)).astype(float)
    triplets = np.array([rng.choice(12, size=3, replace=False) for _ in range(500)])
    expected_hits = Fraction(0)
    expected_ties = 0
    for i, j, k in triplets.tolist():
        logits = [embedding[i] @ embedding[j], embedding[i] @ embedding[k], embedding[j] @ embedding[k]]
        n_max = logits.count(max(logits))
        expected_ties += n_max > 1
        if logits[0] == max(logits):
            expected_hits += Fraction(1, n_max)

    result = odd_one_out_accuracy(embedding, triplets, return_ties=True, batch_size=37)

    assert expected_ties > 100
    assert result.n_ties == expected_ties
    assert result.accuracy == float(expected_hits / len(triplets))


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e150])
def test_log_probabilities_equal_brute_force(scale):
    # Dot products up to 1e300 at the largest scale: only a max shift keeps them finite.
    embedding = np.random.default_rng(6).random((6, 4)) * scale
    triplets = np.array([[i, j, k] for i in range(6) for j in range(6) for k in range(6)
                         if len({i, j, k}) == 3])
    expected = []
    for i, j, k in triplets.tolist():
        logits = np.array([embedding[i] @ embedding[j], embedding[i] @ embedding[k],
                           embedding[j] @ embedding[k]])
        peak = logits.max()
        expected.append(logits[0] - peak - np.log(np.exp(logits - peak).sum()))

    result = choice_log_probabilities(embedding, triplets, batch_size=7)

    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)


def test_log_probability_of_large_equal_logits():
    # Three equal dot products of 1e16, where float64 values are 2 apart: the
    # shift by the maximum must come before adding log(3), or log(3) rounds to 2.
    embedding = np.full((3, 1), 1e8)

    result = choice_log_probabilities(embedding, [[0, 1, 2]])

    np.testing.assert_allclose(result, [-math.log(3)], rtol=1e-15)


def test_log_probabilities_match_scipy_log_softmax():
    from scipy.special import log_softmax

    embedding = np.random.default_rng(11).random((9, 5)) * 4
    triplets = np.array([[i, j, k] for i in range(9) for j in range(9) for k in range(9)
                         if len({i, j, k}) == 3])
    logits = triplet_logits(embedding, triplets)

    result = choice_log_probabilities(embedding, triplets, batch_size=50)

    np.testing.assert_allclose(result, log_softmax(logits, axis=1)[:, 0], rtol=1e-13, atol=1e-15)
