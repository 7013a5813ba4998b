"""Unique-triplet sampling and the rank encoding of object sets."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from scipy import stats

from dimalign.triplets import count_triplets, rank_triplets, sample_triplets, unrank_triplets


def as_sets(triplets: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(row) for row in np.sort(triplets, axis=1).tolist()]


def test_too_many_unique_rejected_at_once():
    started = time.perf_counter()

    with pytest.raises(ValueError) as error:
        sample_triplets(5, 20)

    assert time.perf_counter() - started < 1.0
    assert "only 10 distinct triplets" in str(error.value)
    assert "replace=True" in str(error.value)


def test_all_ten_sets_of_five_objects():
    triplets = sample_triplets(5, 10, random_state=0)

    assert triplets.shape == (10, 3)
    assert sorted(as_sets(triplets)) == list(itertools.combinations(range(5), 3))


def test_rows_sorted_within_row():
    triplets = sample_triplets(30, 500, random_state=1)

    assert np.all(triplets[:, 0] < triplets[:, 1])
    assert np.all(triplets[:, 1] < triplets[:, 2])
    assert triplets.dtype == np.int64


@pytest.mark.parametrize("n_triplets", [1, 300, 9_000, 19_000, 19_600])
def test_unique_across_strategies(n_triplets):
    # 50 objects form 19,600 sets: 300 rejects repeats, 9,000 is close to half,
    # 19,000 and 19,600 permute all sets.
    triplets = sample_triplets(50, n_triplets, random_state=2)

    assert triplets.shape == (n_triplets, 3)
    assert len(set(as_sets(triplets))) == n_triplets
    assert triplets.min() >= 0
    assert triplets.max() <= 49


def test_same_seed_same_triplets():
    first = sample_triplets(100, 1000, random_state=5)
    second = sample_triplets(100, 1000, random_state=5)
    other = sample_triplets(100, 1000, random_state=6)

    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_replace_allows_more_than_all_sets():
    triplets = sample_triplets(5, 200, random_state=0, replace=True)

    assert triplets.shape == (200, 3)
    assert set(as_sets(triplets)) == set(itertools.combinations(range(5), 3))


def test_replace_draws_sets_uniformly():
    # 6 objects form 20 sets; 40,000 draws give 2,000 per set, standard
    # deviation about 44, so 250 is more than 5 standard deviations.
    triplets = sample_triplets(6, 40_000, random_state=3, replace=True)

    counts = np.bincount(rank_triplets(triplets), minlength=20)

    assert np.all(np.abs(counts - 2000) < 250)


def test_unique_draws_sets_uniformly():
    # 5 of the 56 sets of 8 objects per seed, 2,000 seeds: each set is expected
    # 2000 * 5 / 56 = 178.6 times, standard deviation about 13.
    counts = np.zeros(56, dtype=int)
    for seed in range(2000):
        counts += np.bincount(rank_triplets(sample_triplets(8, 5, random_state=seed)), minlength=56)

    assert counts.sum() == 10_000
    assert np.all(np.abs(counts - 2000 * 5 / 56) < 65)


def test_invalid_sizes_rejected():
    with pytest.raises(ValueError, match="n_triplets"):
        sample_triplets(10, -1)
    with pytest.raises(ValueError, match="n_objects"):
        sample_triplets(2, 1)
    assert sample_triplets(10, 0).shape == (0, 3)


@pytest.mark.parametrize(
    ("n_objects", "n_triplets", "message"),
    [(7.5, 3, "n_objects must be a whole number, got 7.5"),
     (7, 3.7, "n_triplets must be a whole number, got 3.7"),
     (7, float("nan"), "n_triplets must be a whole number, got nan")],
)
def test_fractional_sizes_rejected(n_objects, n_triplets, message):
    # int() would truncate 3.7 to 3 triplets without saying so.
    with pytest.raises(ValueError, match=message):
        sample_triplets(n_objects, n_triplets)


def test_whole_float_sizes_accepted():
    triplets = sample_triplets(7.0, 1e1, random_state=0)

    assert np.array_equal(triplets, sample_triplets(7, 10, random_state=0))


def test_large_object_count_is_fast_and_unique():
    started = time.perf_counter()

    triplets = sample_triplets(24_102, 200_000, random_state=0)

    assert time.perf_counter() - started < 10.0
    assert len(np.unique(rank_triplets(triplets))) == 200_000
    assert triplets.max() < 24_102


def test_count_triplets_exact():
    assert count_triplets(5) == 10
    assert count_triplets(2) == 0
    assert count_triplets(24_102) == 24_102 * 24_101 * 24_100 // 6



@pytest.mark.parametrize(
    ("n_objects", "message"),
    [(3.5, "n_objects must be a whole number, got 3.5"),
     (-1, "n_objects must be >= 0, got -1")],
)
def test_count_triplets_rejects_invalid_counts(n_objects, message):
    """int(3.5) would count the sets of 3 objects without saying so."""
    with pytest.raises(ValueError, match=message):
        count_triplets(n_objects)


@pytest.mark.parametrize(
    ("ranks", "message"),
    [([3, -1], r"ranks must lie in \[0, 1,333,331,333,334,000,000\), got -1 at position 1"),
     ([2**62], r"ranks must lie in \[0, 1,333,331,333,334,000,000\), got 4611686018427387904 at position 0"),
     ([1.5], r"ranks must be whole numbers, got 1.5 at position 0"),
     ([0.0, float("nan")], r"ranks must be whole numbers, got nan at position 1"),
     (["1"], r"ranks must be integers, got dtype <U1")],
)
def test_unrank_rejects_invalid_ranks(ranks, message):
    """A rank beyond the limit used to loop forever, and a negative one gave index -1."""
    with pytest.raises(ValueError, match=message):
        unrank_triplets(np.array(ranks))


def test_unrank_accepts_whole_float_ranks():
    assert unrank_triplets(np.array([0.0, 3.0])).tolist() == [[0, 1, 2], [1, 2, 3]]

def test_rank_is_colex_position():
    combinations = list(itertools.combinations(range(12), 3))
    colex = sorted(combinations, key=lambda triple: triple[::-1])

    ranks = rank_triplets(np.array(colex))

    assert ranks.tolist() == list(range(math.comb(12, 3)))
    assert unrank_triplets(ranks).tolist() == [list(triple) for triple in colex]


def test_rank_ignores_order_within_row():
    assert rank_triplets(np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2]])).tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("triplets", "message"),
    [([[0, 0, 0]], r"triplets to rank: a triplet needs three distinct objects.* \(row 0: \[0, 0, 0\]\)"),
     ([[0, 1, -1]], "triplets to rank, row 0: negative object index -1")],
)
def test_rank_rejects_rows_that_are_no_object_set(triplets, message):
    """Both rows used to get a rank: [0, 0, 0] that of [0, 1, 2], and [0, 1, -1] the rank -1."""
    with pytest.raises(ValueError, match=message):
        rank_triplets(np.array(triplets))


def test_unrank_round_trip_at_limit():
    n_sets = count_triplets(2_000_000)
    ranks = np.array([0, 1, n_sets // 3, n_sets // 2, n_sets - 2, n_sets - 1])
    ranks = np.concatenate([ranks, np.random.default_rng(0).integers(0, n_sets, 100_000)])

    triplets = unrank_triplets(ranks)

    assert np.array_equal(rank_triplets(triplets), ranks)
    assert triplets[5].tolist() == [1_999_997, 1_999_998, 1_999_999]
    assert np.all(np.diff(triplets, axis=1) > 0)


def test_rank_largest_index_is_exact():
    from dimalign.triplets.sampling import MAX_OBJECTS

    last = MAX_OBJECTS - 1
    rank = rank_triplets(np.array([[last - 2, last - 1, last]]))
    assert int(rank[0]) == math.comb(MAX_OBJECTS, 3) - 1


def test_rank_rejects_index_that_would_overflow():
    from dimalign.triplets.sampling import MAX_OBJECTS

    # k (k - 1) (k - 2) exceeds 2^63 for k = 3,000,000, so the int64 product would wrap around.
    with pytest.raises(ValueError, match="triplet row 1 has object index 3,000,000"):
        rank_triplets(np.array([[0, 1, 2], [0, 1, 3_000_000]]))
    with pytest.raises(ValueError, match="below 2,000,000"):
        rank_triplets(np.array([[0, 1, MAX_OBJECTS]]))


@pytest.mark.parametrize(("n_triplets", "replace"), [(5, False), (30, False), (70, True)])
def test_sets_uniform_by_chi_square(n_triplets, replace):
    # 7 objects form 35 sets. 5 of them take the rejection path, 30 the
    # permutation path. A chi-square test over all cells catches a bias spread
    # over many sets that a per-set bound of several standard deviations misses.
    n_sets = math.comb(7, 3)
    counts = np.zeros(n_sets, dtype=np.int64)
    for seed in range(1500):
        triplets = sample_triplets(7, n_triplets, random_state=seed, replace=replace)
        assert triplets.min() >= 0
        assert triplets.max() < 7
        counts += np.bincount(rank_triplets(triplets), minlength=n_sets)

    assert stats.chisquare(counts).pvalue > 1e-4


def test_first_row_uniform_by_chi_square():
    # Without replacement the rows come in random order, so the first row
    # alone must be uniform over the 35 sets as well.
    first_ranks = [rank_triplets(sample_triplets(7, 5, random_state=seed))[0] for seed in range(3500)]

    counts = np.bincount(first_ranks, minlength=35)

    assert stats.chisquare(counts).pvalue > 1e-4


def test_generator_and_seed_give_same_triplets():
    from_seed = sample_triplets(50, 100, random_state=5)
    from_generator = sample_triplets(50, 100, random_state=np.random.default_rng(5))

    assert np.array_equal(from_seed, from_generator)
