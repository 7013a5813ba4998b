"""Tests of the jackknife relevance of dimensions for triplet choices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dimalign.analysis.relevance import (
    agreement_on_different_dimensions,
    compare_decisions,
    jackknife_relevance,
    largest_disagreements,
    option_probabilities,
)


def all_triplets(n_objects):
    return np.array(list(itertools.permutations(range(n_objects), 3)), dtype=np.int64)


def softmax_choice(embedding, triplet):
    """Probability that the last object is the odd one out, written out by hand."""
    i, j, k = triplet
    s_ij = embedding[i] @ embedding[j]
    s_ik = embedding[i] @ embedding[k]
    s_jk = embedding[j] @ embedding[k]
    return np.exp(s_ij) / (np.exp(s_ij) + np.exp(s_ik) + np.exp(s_jk))


def test_zero_dimension_has_zero_relevance():
    embedding = np.array(
        [[1.0, 0.5, 0.0], [0.2, 1.5, 0.0], [0.7, 0.1, 0.0], [0.0, 0.9, 0.0]]
    )
    result = jackknife_relevance(embedding, all_triplets(4), keep_drops=True)
    # Removing dimension 2 subtracts 0.0 from every dot product: identical logits.
    assert np.all(result.drops[:, 2] == 0.0)
    assert result.mean_drop[2] == 0.0


def test_single_dimension_removed_gives_one_third():
    embedding = np.array([[0.3], [1.2], [2.0], [0.8]])
    result = jackknife_relevance(embedding, all_triplets(4), keep_drops=True)
    # Without its only dimension every dot product is exactly 0, so p = 1/3.
    removed_probability = result.probabilities - result.drops[:, 0]
    assert np.all(removed_probability == 1.0 / 3.0)


def test_drops_match_manual_removal():
    rng = np.random.default_rng(0)
    embedding = rng.gamma(1.0, 1.0, size=(6, 4))
    triplets = all_triplets(6)[::7]
    result = jackknife_relevance(embedding, triplets, keep_drops=True, batch_size=5)

    for row, triplet in enumerate(triplets):
        full = softmax_choice(embedding, triplet)
        assert result.probabilities[row] == pytest.approx(full, abs=1e-12)
        for dim in range(4):
            reduced = np.delete(embedding, dim, axis=1)
            expected = full - softmax_choice(reduced, triplet)
            assert result.drops[row, dim] == pytest.approx(expected, abs=1e-12)
    assert result.most_relevant.tolist() == np.argmax(result.drops, axis=1).tolist()
    np.testing.assert_allclose(result.mean_drop, result.drops.mean(axis=0), atol=1e-14)


def test_probabilities_match_similarity_module():
    similarity = pytest.importorskip("dimalign.analysis.similarity")
    rng = np.random.default_rng(1)
    embedding = rng.gamma(1.0, 2.0, size=(10, 5))
    triplets = all_triplets(10)[::11]
    result = jackknife_relevance(embedding, triplets)
    expected = similarity.choice_probabilities(embedding, triplets)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-12, rtol=0)


def test_relevance_table_shares_sum_to_one():
    rng = np.random.default_rng(2)
    embedding = rng.gamma(1.0, 1.0, size=(8, 3))
    table = jackknife_relevance(embedding, all_triplets(8)).by_dimension()
    assert table["share_most_relevant"].sum() == pytest.approx(1.0)
    assert table["mean_drop"].is_monotonic_decreasing
    assert sorted(table["dim"].tolist()) == [0, 1, 2]


def test_option_probabilities_rows():
    rng = np.random.default_rng(3)
    embedding = rng.gamma(1.0, 1.0, size=(5, 2))
    triplets = all_triplets(5)[:6]
    probabilities = option_probabilities(embedding, triplets)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-15)
    for row, triplet in enumerate(triplets):
        assert probabilities[row, 2] == pytest.approx(softmax_choice(embedding, triplet), abs=1e-12)


def test_compare_decisions_agreement_tables():
    # Humans group objects 0, 1, 3 on dimension 0; the DNN groups 0, 1 on its
    # dimension 1 and 2, 3 on its dimension 0.
    human = np.array([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    dnn = np.array([[0.0, 3.0], [0.0, 3.0], [3.0, 0.0], [3.0, 0.0]])
    triplets = np.array([[0, 1, 2], [0, 2, 3]])
    comparison = compare_decisions(human, dnn, triplets)

    # Triplet 0: both drop object 2. Triplet 1: humans drop 2, the DNN drops 0.
    assert comparison.human_choice.tolist() == [2, 1]
    assert comparison.dnn_choice.tolist() == [2, 0]
    assert comparison.agree.tolist() == [True, False]
    assert comparison.human.most_relevant[0] == 0
    assert comparison.dnn.most_relevant[0] == 1

    # With human dim 0 matched to DNN dim 0, triplet 0 rests on unmatched dimensions.
    agreements = agreement_on_different_dimensions(comparison, [0, 1])
    assert agreements["triplet"].tolist() == [0]
    assert agreements["human_dim"].tolist() == [0]
    assert agreements["dnn_dim"].tolist() == [1]
    assert agreements["matched_dnn_dim"].tolist() == [0]
    # With human dim 0 matched to DNN dim 1, the same agreement rests on a matched pair.
    assert agreement_on_different_dimensions(comparison, [1, 0]).empty

    disagreements = largest_disagreements(comparison, names=["a", "b", "c", "d"])
    assert disagreements["triplet"].tolist() == [1]
    assert disagreements["human_odd_one_out_id"].tolist() == ["c"]
    assert disagreements["dnn_odd_one_out_id"].tolist() == ["a"]
    expected = comparison.human_probabilities[1, 1] - comparison.dnn_probabilities[1, 1]
    assert disagreements["difference"].item() == pytest.approx(expected)
    assert disagreements["difference"].item() > 0.9


def test_jackknife_rejects_out_of_range_index():
    with pytest.raises(ValueError, match=r"row 0: object index 3 is out of range for 3 objects"):
        jackknife_relevance(np.ones((3, 2)), np.array([[0, 1, 3]]))


def test_jackknife_rejects_empty_triplets():
    with pytest.raises(ValueError, match="no triplets"):
        jackknife_relevance(np.ones((3, 2)), np.zeros((0, 3), dtype=np.int64))


def test_jackknife_rejects_repeated_object():
    with pytest.raises(ValueError, match=r"1 of 2 rows repeat an object \(row 1: \[2, 0, 2\]\)"):
        jackknife_relevance(np.ones((3, 2)), np.array([[0, 1, 2], [2, 0, 2]]))


def test_jackknife_rejects_embedding_without_dimensions():
    with pytest.raises(ValueError, match=r"has no dimension \(shape \(3, 0\)\)"):
        jackknife_relevance(np.ones((3, 0)), np.array([[0, 1, 2]]))


def test_jackknife_rejects_nan_embedding():
    embedding = np.ones((3, 2))
    embedding[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"embedding rows \[1\] contain NaN or inf"):
        jackknife_relevance(embedding, np.array([[0, 1, 2]]))


@pytest.mark.parametrize(("bad", "label"), [(0, "human"), (1, "DNN")])
def test_compare_decisions_names_invalid_side(bad, label):
    """Both embeddings are checked alike, so each error names the embedding that fails."""
    triplets = np.array([[0, 1, 2]])
    with_nan = [np.ones((3, 2)), np.ones((3, 2))]
    with_nan[bad][1, 0] = np.nan
    without_dimensions = [np.ones((3, 2)), np.ones((3, 2))]
    without_dimensions[bad] = np.ones((3, 0))

    with pytest.raises(ValueError, match=rf"^the {label} embedding rows \[1\] contain NaN or inf\. "):
        compare_decisions(*with_nan, triplets)
    with pytest.raises(ValueError, match=rf"^the {label} embedding has no dimension \(shape \(3, 0\)\)"):
        compare_decisions(*without_dimensions, triplets)


def test_jackknife_accepts_whole_floats():
    # np.loadtxt reads triplet files as float64; whole numbers give the same result as integers.
    embedding = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    as_floats = jackknife_relevance(embedding, np.array([[0.0, 1.0, 2.0]]))
    as_integers = jackknife_relevance(embedding, np.array([[0, 1, 2]]))
    assert as_floats.most_relevant.tolist() == [0]
    np.testing.assert_array_equal(as_floats.mean_drop, as_integers.mean_drop)


def test_jackknife_rejects_fractional_index():
    with pytest.raises(ValueError, match=r"row 1, column 0: value 0.5 is not an integer object index"):
        jackknife_relevance(np.ones((3, 2)), np.array([[0.0, 1.0, 2.0], [0.5, 1.0, 2.0]]))


def test_saturated_probability_ranks_by_log_drop():
    # s_01 = 113 with both dimensions, 64 without dimension 0 and 49 without
    # dimension 1: p(choice) rounds to 1.0 in float64 in all three cases, so
    # every probability drop is 0, but removing dimension 1 lowers log p most.
    embedding = np.array([[7.0, 8.0], [7.0, 8.0], [0.0, 0.0]])
    result = jackknife_relevance(embedding, np.array([[0, 1, 2]]), keep_drops=True)
    assert result.probabilities[0] == 1.0
    assert np.all(result.drops == 0.0)
    assert result.most_relevant.tolist() == [1]
    assert result.n_tied == 0


def test_tied_drops_credit_no_dimension():
    # Dimensions 0 and 1 are equal for the three objects of triplet 0, so no
    # removal is more relevant.
    embedding = np.array([[1.0, 1.0, 0.2], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [30.0, 30.0, 0.0], [30.0, 30.0, 0.0]])
    triplets = np.array([[0, 1, 2], [3, 4, 2], [0, 2, 1]])
    with pytest.warns(UserWarning, match=r"2 of 3 triplets have no single most relevant dimension"):
        result = jackknife_relevance(embedding, triplets)
    assert result.most_relevant.tolist()[:2] == [-1, -1]
    assert result.most_relevant[2] >= 0
    assert result.n_tied == 2
    assert result.share_most_relevant.sum() == pytest.approx(1 / 3)
    assert result.share_most_relevant[0] <= 1 / 3


def test_choice_beyond_underflow_has_a_dimension():
    # s_01 = 2,500, and 900 or 1,600 without a dimension: exp(-900) underflows,
    # so log p is 0 in float64 for every removal. Without dimension 0 the
    # choice is still less certain (-log p = 2 exp(-900) against 2 exp(-1600)),
    # so dimension 0 is the most relevant, as for smaller weights.
    embedding = np.array([[40.0, 30.0], [40.0, 30.0], [0.0, 0.0]])
    for scale in (0.1, 1.0):
        result = jackknife_relevance(scale * embedding, np.array([[0, 1, 2]]))
        assert result.most_relevant.tolist() == [0]
        assert result.n_tied == 0


def test_saturated_ties_need_equal_dimensions():
    # Two removals that leave equal logits tie also beyond the underflow.
    embedding = np.array([[30.0, 30.0, 1.0], [30.0, 30.0, 1.0], [0.0, 0.0, 1.0]])
    with pytest.warns(UserWarning, match=r"1 of 1 triplets have no single most relevant dimension"):
        result = jackknife_relevance(embedding, np.array([[0, 1, 2]]))
    assert result.most_relevant.tolist() == [-1]


def test_agreement_table_skips_tied_triplets():
    # Both models see the two objects of triplet 0 as equal on two dimensions.
    human = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    dnn = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 2.0]])
    with pytest.warns(UserWarning, match="no single most relevant dimension"):
        comparison = compare_decisions(human, dnn, np.array([[0, 1, 2]]))
    assert comparison.agree.tolist() == [True]
    assert agreement_on_different_dimensions(comparison, [1, 0]).empty


def test_tie_warning_names_the_model():
    # Only the DNN embedding ties (its two dimensions are equal on all three
    # objects), so the warning must name that model.
    human = np.array([[1.0, 0.0], [1.0, 0.5], [0.0, 1.0]])
    dnn = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    with pytest.warns(UserWarning) as record:
        compare_decisions(human, dnn, np.array([[0, 1, 2]]))
    messages = [str(warning.message) for warning in record]
    assert len(messages) == 1
    assert messages[0].startswith("DNN embedding: 1 of 1 triplets have no single most relevant dimension")


def test_relevance_accepts_reversed_view():
    """A view with negative strides (emb[:, ::-1], np.flip) is an ordinary array to numpy users."""
    embedding = np.random.default_rng(4).gamma(1.0, 1.0, size=(8, 3))
    view = embedding[:, ::-1]
    triplets = np.array([[0, 1, 2], [3, 4, 5], [7, 6, 0]])

    expected = jackknife_relevance(view.copy(), triplets)
    result = jackknife_relevance(view, triplets)
    np.testing.assert_array_equal(result.most_relevant, expected.most_relevant)
    np.testing.assert_allclose(result.mean_drop, expected.mean_drop, atol=1e-15, rtol=0)


@pytest.mark.parametrize(
    ("triplets", "message"),
    [
        (np.array([[0, 1, 2.5]]), r"row 0, column 2: value 2.5 is not an integer object index"),
        (np.array([[0, 1, np.nan]]), r"row 0, column 2: value nan is not an integer object index"),
        (np.array([[0, 0, 1]]), r"a triplet needs three distinct objects"),
    ],
)
def test_compare_decisions_rejects_invalid_triplets(triplets, message):
    """A fractional index must not be truncated to another object."""
    embedding = np.eye(4) + 0.1
    with pytest.raises(ValueError, match=message):
        compare_decisions(embedding, embedding, triplets)


@pytest.mark.parametrize(
    ("batch_size", "message"),
    [(-1, "batch_size must be at least 1, got -1"),
     (0, "batch_size must be at least 1, got 0"),
     (1.5, "batch_size must be an integer, got 1.5")],
)
@pytest.mark.parametrize("function", [option_probabilities, jackknife_relevance])
def test_batch_size_must_be_positive_integer(function, batch_size, message):
    """A negative batch size made option_probabilities return uninitialised memory."""
    embedding = np.eye(6) + 0.1
    with pytest.raises(ValueError, match=message):
        function(embedding, np.array([[0, 1, 2], [3, 4, 5]]), batch_size=batch_size)


@pytest.mark.parametrize(
    ("top", "message"),
    [(-1, "top must be at least 1, got -1"), (0, "top must be at least 1, got 0"), (2.5, "top must be an integer, got 2.5")],
)
def test_disagreement_tables_reject_invalid_top(top, message):
    """top=-1 sliced [:-1] and silently dropped the last row."""
    human = np.array([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    dnn = np.array([[0.0, 3.0], [0.0, 3.0], [3.0, 0.0], [3.0, 0.0]])
    comparison = compare_decisions(human, dnn, np.array([[0, 1, 2], [0, 2, 3]]))
    with pytest.raises(ValueError, match=message):
        largest_disagreements(comparison, top=top)
    with pytest.raises(ValueError, match=message):
        agreement_on_different_dimensions(comparison, [0, 1], top=top)


def test_choice_agreement_splits_ties():
    # Objects 3, 4 and 5 are zero in both models, so both models rate the
    # three choices of triplet (3, 4, 5) equally: 1/3 of the choices agree
    # when each tie is broken at random, whatever the column order.
    human = np.array([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    dnn = np.array([[0.0, 3.0], [0.0, 3.0], [3.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    triplets = np.array([[0, 1, 2], [3, 4, 5]])

    comparison = compare_decisions(human, dnn, triplets)

    assert comparison.choice_agreement == pytest.approx((1 + 1 / 3) / 2, abs=1e-12)
    reordered = compare_decisions(human, dnn, triplets[:, [2, 0, 1]])
    assert reordered.choice_agreement == pytest.approx((1 + 1 / 3) / 2, abs=1e-12)
    assert comparison.n_tied_choices == {"human": 1, "dnn": 1}


def test_compare_agreement_splits_ties(tmp_path):
    """relevance_summary.json counts a triplet that both models tie as 1/3 of an agreement."""
    import json

    from dimalign.analysis.compare import compare

    rng = np.random.default_rng(0)
    human = rng.gamma(1.0, 1.0, size=(8, 2))
    dnn = rng.gamma(1.0, 1.0, size=(8, 3))
    human[5:] = 0.0
    dnn[5:] = 0.0
    triplets = np.array([[5, 6, 7], [7, 5, 6]])

    compare(human, dnn, tmp_path / "out", triplets=triplets, n_bootstrap=0, top_k=3)

    summary = json.loads((tmp_path / "out" / "relevance_summary.json").read_text())
    assert summary["choice_agreement"] == pytest.approx(1 / 3, abs=1e-12)
    assert summary["n_human_tied_choices"] == 2
    assert summary["n_dnn_tied_choices"] == 2


def test_all_tied_log_names_no_dimension(caplog):
    # Every triplet ties, so no dimension is most relevant and the log must not name dimension 0.
    embedding = np.array([[30.0, 30.0, 1.0], [30.0, 30.0, 1.0], [0.0, 0.0, 1.0]])
    with caplog.at_level("INFO", logger="dimalign.analysis.relevance"), pytest.warns(UserWarning):
        jackknife_relevance(embedding, np.array([[0, 1, 2]]))

    assert "most often relevant: none (every triplet is tied)" in caplog.text
    assert "dim 0" not in caplog.text


def test_choice_agreement_partial_ties():
    """A two-way tie against one choice counts 1/2 or 0, and two two-way ties sharing one option 1/4."""
    # In each triplet (a, b, c) with rows [1, 0], [1, 1], [0, 1], the pairs bc and ab
    # both have similarity 1 and ac has 0, so the human model ties columns 0 and 2.
    human = np.tile([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], (3, 1))
    dnn = np.array([
        [1.0, 0.0], [1.0, 0.0], [0.0, 1.0],  # pair ab alone: column 2, one of the human's two
        [1.0, 1.0], [1.0, 0.0], [0.0, 1.0],  # pairs ab and ac: columns 1 and 2
        [1.0, 0.0], [0.0, 1.0], [1.0, 0.0],  # pair ac alone: column 1, not one of the human's
    ])
    triplets = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])

    comparison = compare_decisions(human, dnn, triplets)

    assert comparison.choice_agreement == (1 / 2 + 1 / 4 + 0) / 3
    assert comparison.n_tied_choices == {"human": 3, "dnn": 1}
    np.testing.assert_array_equal(comparison.human_choice, [0, 0, 0])
    np.testing.assert_array_equal(comparison.dnn_choice, [2, 1, 1])
    reversed_columns = compare_decisions(human, dnn, triplets[:, ::-1])
    assert reversed_columns.choice_agreement == (1 / 2 + 1 / 4 + 0) / 3
