"""Odd-one-out choices simulated from features, against analytically derived values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dimalign.io.triplets import load_triplets
from dimalign.triplets import sample_triplets, simulate_choices

# Many tests tie on purpose; the warning about ties is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore:.* were ties broken at random:UserWarning")

# Pair similarities by dot product: (0, 1) -> 1.0, (0, 2) -> 0.5, (1, 2) -> 0.0.
GRADED = np.array([[1.0, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def pair_similarity(features: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", features[first], features[second])


@pytest.mark.parametrize("method", ["gram", "gather"])
@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean"])
def test_argmax_clear_pair(similarity, method):
    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    triplets = np.array([[2, 0, 1], [0, 2, 1], [1, 0, 2], [0, 1, 2]])

    result = simulate_choices(features, triplets, similarity=similarity, method=method)

    assert result.triplets[:, 2].tolist() == [2, 2, 2, 2]
    # The pair keeps its input order.
    assert result.triplets[:, :2].tolist() == [[0, 1], [0, 1], [1, 0], [0, 1]]
    assert result.n_ties == 0
    assert result.method == method


@pytest.mark.parametrize("method", ["gram", "gather"])
def test_similarities_disagree_on_magnitudes(method):
    # Objects on one ray at 1, 3 and 10. Dot products 3, 10, 30: the pair (1, 2)
    # is most similar. Distances 2, 9, 7: the pair (0, 1) is closest. Cosines
    # are all 1: a three-way tie.
    features = np.array([[1.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    triplets = np.array([[0, 1, 2]])

    dot = simulate_choices(features, triplets, "dot", method=method)
    euclidean = simulate_choices(features, triplets, "euclidean", method=method)
    cosine = simulate_choices(features, triplets, "cosine", method=method)

    assert dot.triplets.tolist() == [[1, 2, 0]]
    assert euclidean.triplets.tolist() == [[0, 1, 2]]
    assert cosine.n_ties == 1


def test_relu_default_only_for_dot():
    # Without ReLU: (0, 1) -> 4, (0, 2) -> -1, (1, 2) -> -2, so 2 is odd.
    # With ReLU rows 0 and 1 become zero and every pair has similarity 0.
    features = np.array([[-1.0, -1.0], [-2.0, -2.0], [1.0, 0.0]])
    triplets = np.array([[0, 1, 2]])

    with_relu = simulate_choices(features, triplets, "dot")
    without_relu = simulate_choices(features, triplets, "dot", relu=False)

    assert with_relu.relu is True
    assert with_relu.n_ties == 1
    assert without_relu.triplets.tolist() == [[0, 1, 2]]
    assert without_relu.n_ties == 0
    assert simulate_choices(features, triplets, "euclidean").relu is False


def test_identical_features_all_ties_reproducible():
    features = np.ones((6, 3))
    triplets = sample_triplets(6, 20, random_state=0)

    first = simulate_choices(features, triplets, random_state=4)
    again = simulate_choices(features, triplets, random_state=4)
    other_seeds = [simulate_choices(features, triplets, random_state=seed) for seed in range(5, 10)]

    assert first.n_ties == 20
    assert np.array_equal(first.triplets, again.triplets)
    assert any(not np.array_equal(first.triplets, other.triplets) for other in other_seeds)
    assert sorted(map(sorted, first.triplets.tolist())) == sorted(map(sorted, triplets.tolist()))


def test_many_ties_warn():
    # float32 features near 1e-23 underflow to dot products of 0, so every
    # choice is a coin flip; the run must warn, not only count the ties. A
    # Python warning, because a notebook shows no log records by default.
    rng = np.random.default_rng(0)
    features = (rng.random((20, 5)) * 1e-23).astype(np.float32)
    triplets = sample_triplets(20, 200, random_state=0)

    with pytest.warns(UserWarning, match=r"200 of 200 choices \(100%\) were ties broken at random") as caught:
        result = simulate_choices(features, triplets, random_state=0)

    assert result.n_ties == 200
    assert [warning.filename for warning in caught] == [__file__]


def test_few_ties_do_not_warn(caplog):
    features = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.9], [0.9, 0.3]])
    triplets = sample_triplets(6, 20, random_state=0)

    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING", logger="dimalign"):
        warnings.simplefilter("always")
        simulate_choices(features, triplets, random_state=0)

    assert not [str(warning.message) for warning in caught if "broken at random" in str(warning.message)]
    assert "broken at random" not in caplog.text


def test_ties_broken_uniformly():
    # 30,000 copies of one fully tied triplet: each object should be the odd
    # one out a third of the time (standard deviation of a share about 0.003).
    triplets = np.tile([[0, 1, 2]], (30_000, 1))

    result = simulate_choices(np.ones((3, 2)), triplets, random_state=0)

    shares = np.bincount(result.triplets[:, 2], minlength=3) / len(triplets)
    assert result.n_ties == 30_000
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.015)


def test_two_way_tie_never_picks_third_pair():
    # (0, 1) and (0, 2) both have dot product 1 and (1, 2) has 0, so the odd
    # one out is 1 or 2, never 0.
    features = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    triplets = np.tile([[0, 1, 2]], (2000, 1))

    result = simulate_choices(features, triplets, random_state=1)

    odd = result.triplets[:, 2]
    assert result.n_ties == 2000
    assert set(odd.tolist()) == {1, 2}


@pytest.mark.parametrize("rule", ["argmax", "softmax"])
def test_result_independent_of_batch_size(rule):
    features = np.ones((8, 2))
    features[::2] = [[1.0, 0.0]]
    triplets = sample_triplets(8, 56, random_state=0)

    whole = simulate_choices(features, triplets, rule=rule, random_state=3)
    batched = simulate_choices(features, triplets, rule=rule, random_state=3, batch_size=5)

    assert np.array_equal(whole.triplets, batched.triplets)
    assert whole.n_ties == batched.n_ties


@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean"])
def test_gram_and_gather_agree(similarity):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 7))
    triplets = sample_triplets(60, 3000, random_state=1)

    gram = simulate_choices(features, triplets, similarity, method="gram")
    gather = simulate_choices(features, triplets, similarity, method="gather", batch_size=97)

    assert np.array_equal(gram.triplets, gather.triplets)


def test_argmax_keeps_most_similar_pair():
    rng = np.random.default_rng(2)
    features = rng.random((40, 5))
    triplets = sample_triplets(40, 2000, random_state=3)

    chosen = simulate_choices(features, triplets).triplets

    kept = pair_similarity(features, chosen[:, 0], chosen[:, 1])
    assert np.all(kept >= pair_similarity(features, chosen[:, 0], chosen[:, 2]))
    assert np.all(kept >= pair_similarity(features, chosen[:, 1], chosen[:, 2]))


def test_softmax_tiny_temperature_equals_argmax():
    rng = np.random.default_rng(4)
    features = rng.random((30, 4))
    triplets = sample_triplets(30, 2000, random_state=5)

    argmax = simulate_choices(features, triplets, rule="argmax")
    softmax = simulate_choices(features, triplets, rule="softmax", temperature=1e-9)

    assert argmax.n_ties == 0
    assert np.array_equal(argmax.triplets, softmax.triplets)


def test_softmax_subnormal_temperature_without_warning():
    """Differences divided by a temperature of 1e-320 overflow to -inf, whose exp() is exactly 0."""
    rng = np.random.default_rng(4)
    features = rng.random((30, 4))
    triplets = sample_triplets(30, 500, random_state=5)

    argmax = simulate_choices(features, triplets, rule="argmax")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        softmax = simulate_choices(features, triplets, rule="softmax", temperature=1e-320)

    assert np.array_equal(argmax.triplets, softmax.triplets)


def test_softmax_matches_analytic_probabilities():
    # Pair similarities 1, 0.5 and 0 at T = 1: the pairs are kept with
    # probabilities exp(s) / sum(exp(s)), so the odd one out is 2, 1 or 0.
    triplets = np.tile([[0, 1, 2]], (20_000, 1))
    weights = np.exp([1.0, 0.5, 0.0])
    expected_odd_shares = {2: weights[0] / weights.sum(), 1: weights[1] / weights.sum(),
                           0: weights[2] / weights.sum()}

    result = simulate_choices(GRADED, triplets, rule="softmax", temperature=1.0, random_state=0)

    counts = np.bincount(result.triplets[:, 2], minlength=3) / len(triplets)
    for odd, share in expected_odd_shares.items():
        # Standard deviation of a share over 20,000 draws is at most 0.0036.
        assert abs(counts[odd] - share) < 0.015, (odd, counts[odd], share)
    assert result.temperature == 1.0


def test_softmax_high_temperature_near_uniform():
    triplets = np.tile([[0, 1, 2]], (20_000, 1))

    result = simulate_choices(GRADED, triplets, rule="softmax", temperature=1000.0)

    shares = np.bincount(result.triplets[:, 2], minlength=3) / len(triplets)
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.015)


def test_nan_feature_row_named():
    features = np.ones((6, 2))
    features[2] = np.nan

    with pytest.raises(ValueError) as error:
        simulate_choices(features, sample_triplets(6, 5))

    assert "feature rows 2 " in str(error.value)
    assert "1 of 6 rows" in str(error.value)


def test_inf_feature_rows_named_in_memmap(tmp_path):
    features = np.lib.format.open_memmap(
        tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=(9, 3)
    )
    features[:] = 1.0
    features[4, 1] = np.inf
    features[7, 0] = -np.inf
    features.flush()

    with pytest.raises(ValueError, match="feature rows 4, 7 contain NaN or inf"):
        simulate_choices(np.load(tmp_path / "f.npy", mmap_mode="r"), sample_triplets(9, 5))


def test_zero_row_rejected_for_cosine():
    features = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])

    with pytest.raises(ValueError, match="rows 1 have zero norm"):
        simulate_choices(features, np.array([[0, 1, 2]]), "cosine")


def test_invalid_options_rejected():
    features = np.eye(3)
    triplets = np.array([[0, 1, 2]])

    with pytest.raises(ValueError, match="unknown similarity"):
        simulate_choices(features, triplets, similarity="pearson")
    with pytest.raises(ValueError, match="unknown rule"):
        simulate_choices(features, triplets, rule="max")
    with pytest.raises(ValueError, match="temperature"):
        simulate_choices(features, triplets, rule="softmax", temperature=0.0)
    with pytest.raises(ValueError, match="out of range"):
        simulate_choices(features, np.array([[0, 1, 3]]))


def test_auto_method_by_memory_and_cost():
    features = np.random.default_rng(0).random((200, 3))

    many = simulate_choices(features, sample_triplets(200, 1000))
    few = simulate_choices(features, sample_triplets(200, 5))
    no_memory = simulate_choices(features, sample_triplets(200, 1000), max_gram_bytes=0)

    assert many.method == "gram"
    assert few.method == "gather"
    assert no_memory.method == "gather"


def test_float32_memmap_features(tmp_path):
    rng = np.random.default_rng(6)
    array = rng.random((50, 16)).astype(np.float32)
    np.save(tmp_path / "features.npy", array)
    triplets = sample_triplets(50, 500, random_state=0)

    mapped = simulate_choices(np.load(tmp_path / "features.npy", mmap_mode="r"), triplets)
    in_memory = simulate_choices(array.astype(np.float64), triplets)

    assert np.array_equal(mapped.triplets, in_memory.triplets)


def test_real_embeddings_reproduce_reference_accuracy(things_dir):
    # Fraction of the human triplets whose odd one out is the argmax choice of
    # dot-product similarity, as listed with the THINGS data: SPoSE 49d 0.659,
    # VICE 42d 0.645, VGG-16 SRF factors 0.452.
    human = load_triplets(
        things_dir / "human_triplets.txt", object_table=things_dir / "unique_id.txt"
    )
    references = {
        "spose_embedding_49d_sorted.txt": 0.659,
        "vice_embedding_42d.npy": 0.645,
        "vgg16_srf_factors_rank200.npy": 0.452,
    }

    for name, reference in references.items():
        path = things_dir / name
        features = np.loadtxt(path) if path.suffix == ".txt" else np.load(path)
        result = simulate_choices(features, human)
        accuracy = float(np.mean(result.triplets[:, 2] == human[:, 2]))
        assert round(accuracy, 3) == reference, name
        assert result.n_ties == 0


def test_euclidean_gram_matches_gather_for_far_off_features():
    """|x|^2 + |y|^2 - 2 x.y cancels in float32 unless the features are centred first."""
    rng = np.random.default_rng(0)
    features = (rng.normal(size=(300, 64)) + 1000).astype(np.float32)
    triplets = sample_triplets(300, 50_000, random_state=0)
    gram = simulate_choices(features, triplets, similarity="euclidean", method="gram", random_state=0)
    gather = simulate_choices(features, triplets, similarity="euclidean", method="gather", random_state=0)
    assert np.array_equal(gram.triplets, gather.triplets)
    assert gram.n_ties == 0


def test_euclidean_gram_matches_gather_for_far_clusters():
    """Centring cannot remove two offsets, so within each cluster the Gram distances cancel."""
    rng = np.random.default_rng(0)
    centres = np.repeat([[100.0], [-100.0]], 20, axis=0)
    features = (centres + 1e-3 * rng.normal(size=(40, 8))).astype(np.float32)
    triplets = sample_triplets(40, 2_000, random_state=1)
    gram = simulate_choices(features, triplets, similarity="euclidean", method="gram", random_state=0)
    gather = simulate_choices(features, triplets, similarity="euclidean", method="gather", random_state=0)

    exact = features.astype(np.float64)
    pairs = [(0, 1), (0, 2), (1, 2)]
    distances = np.stack(
        [np.linalg.norm(exact[triplets[:, a]] - exact[triplets[:, b]], axis=1) for a, b in pairs], axis=1
    )
    odd_one_out = triplets[np.arange(len(triplets)), 2 - np.argmin(distances, axis=1)]
    assert np.array_equal(gram.triplets, gather.triplets)
    assert np.array_equal(gram.triplets[:, 2], odd_one_out)


@pytest.mark.parametrize("method", ["gram", "gather"])
def test_overflowing_similarity_is_an_error(method):
    features = np.full((6, 4), 3e19, dtype=np.float32)
    features[::2] *= 0.5
    with pytest.raises(ValueError, match=r"triplet 0 \(objects .*\) are not finite: features as large as 3e\+19 overflow float32"):
        simulate_choices(features, np.array([[0, 1, 2], [3, 4, 5]]), method=method)


@pytest.mark.parametrize("method", ["gram", "gather"])
def test_overflow_advice_depends_on_dtype(method):
    """Saving as float64 helps float32 features only."""
    triplets = np.array([[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match="or save them as float64"):
        simulate_choices(np.full((6, 4), 3e19, dtype=np.float32), triplets, method=method)

    with pytest.raises(ValueError, match="overflow float64") as caught:
        simulate_choices(np.full((6, 4), 1e200), triplets, method=method)
    assert "float64" not in str(caught.value).split("overflow float64", 1)[1]


def test_auto_avoids_gram_when_squared_norms_overflow():
    """Distances within each triplet are small, but |x|^2 of the far group overflows float32."""
    features = np.zeros((6, 4), dtype=np.float32)
    features[:3] = 3e19
    features[0, 0] += 1e13
    features[1, 1] += 2e13
    features[3:] = np.random.default_rng(0).random((3, 4))
    triplets = np.array([[0, 1, 2], [3, 4, 5]])
    auto = simulate_choices(features, triplets, similarity="euclidean", method="auto")
    gather = simulate_choices(features, triplets, similarity="euclidean", method="gather")
    assert auto.method == "gather"
    assert np.array_equal(auto.triplets, gather.triplets)


def brute_force_similarity(x: np.ndarray, y: np.ndarray, similarity: str) -> float:
    """Similarity of two feature rows as the module docstring defines it, in float64."""
    if similarity == "dot":
        return float(np.maximum(x, 0.0) @ np.maximum(y, 0.0))
    if similarity == "cosine":
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
    return -float(np.linalg.norm(x - y))


@pytest.mark.parametrize("method", ["gram", "gather"])
@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean"])
def test_argmax_equals_brute_force_loop(similarity, method):
    # Normal features make many ReLU dot products exactly 0, so "dot" also
    # has ties. There the odd one out must be one that a tied pair leaves.
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 6))
    triplets = sample_triplets(40, 2000, random_state=3)
    triplets = rng.permuted(triplets, axis=1)

    result = simulate_choices(features, triplets, similarity, method=method, batch_size=300)

    n_ties = 0
    for row, (a, b, c) in enumerate(triplets.tolist()):
        pair_similarities = np.array([
            brute_force_similarity(features[a], features[b], similarity),
            brute_force_similarity(features[a], features[c], similarity),
            brute_force_similarity(features[b], features[c], similarity),
        ])
        best = np.flatnonzero(pair_similarities == pair_similarities.max())
        chosen = result.triplets[row].tolist()
        if len(best) > 1:
            n_ties += 1
            assert chosen[2] in {(c, b, a)[pair] for pair in best}, row
        else:
            assert chosen == [[a, b, c], [a, c, b], [b, c, a]][best[0]], row
    assert result.n_ties == n_ties
    if similarity == "dot":
        assert n_ties > 0


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_softmax_frequencies_within_binomial_error(temperature):
    # In triplet (2, 0, 1) the pairs (2, 0), (2, 1) and (0, 1) have dot
    # products 0.5, 0 and 1. The odd one out is then 1, 0 or 2 with
    # probability exp(s / T) / sum(exp(s / T)). At T = 1 a test cannot tell
    # s / T from s * T, hence other temperatures.
    n_draws = 100_000
    triplets = np.tile([[2, 0, 1]], (n_draws, 1))
    weights = np.exp(np.array([0.5, 0.0, 1.0]) / temperature)
    expected = weights / weights.sum()

    result = simulate_choices(GRADED, triplets, rule="softmax", temperature=temperature, random_state=7)

    odd = result.triplets[:, 2]
    shares = np.array([np.mean(odd == 1), np.mean(odd == 0), np.mean(odd == 2)])
    standard_errors = np.sqrt(expected * (1 - expected) / n_draws)
    assert np.all(np.abs(shares - expected) < 4.5 * standard_errors), (shares, expected)
    pairs = {tuple(row) for row in result.triplets[:, :2].tolist()}
    assert pairs == {(2, 0), (2, 1), (0, 1)}


@pytest.mark.parametrize(
    ("features", "message"),
    [(np.array([[1.0 + 2j, 0], [0, 1], [1, 1]]), "features must be real numbers, got dtype complex128"),
     (np.array([["a", "b"], ["c", "d"], ["e", "f"]]), "features must be real numbers, got dtype <U1")],
)
def test_non_real_features_rejected(features, message):
    """A complex feature would lose its imaginary part with only numpy's ComplexWarning."""
    with pytest.raises(ValueError, match=message):
        simulate_choices(features, np.array([[0, 1, 2]]))


@pytest.mark.parametrize(
    ("batch_size", "message"),
    [(-1, "batch_size must be at least 1, got -1"),
     (0, "batch_size must be at least 1, got 0"),
     (2.7, "batch_size must be an integer, got 2.7")],
)
def test_invalid_batch_size_rejected(batch_size, message):
    """A negative batch size returned an uninitialised array as the simulated triplets."""
    features = np.random.default_rng(0).random((10, 4))
    with pytest.raises(ValueError, match=message):
        simulate_choices(features, sample_triplets(10, 20), batch_size=batch_size)
