"""Tests of the leave-one-out noise ceiling of repeated triplets."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest

from dimalign.analysis.noise_ceiling import NoiseCeiling, triplet_noise_ceiling


def responses(objects: tuple[int, int, int], odd_ones: list[int]) -> list[list[int]]:
    """Write one triplet per response, with the given odd one out last."""
    rows = []
    for odd in odd_ones:
        pair = [obj for obj in objects if obj != odd]
        rows.append([*pair, odd])
    return rows


def test_ceiling_hand_computed():
    # Set A {0, 1, 2} answered 2, 2, 2, 0. Each 2 is predicted by the others
    # (2, 2, 0) -> majority 2, a hit. The 0 is predicted by (2, 2, 2), a miss: 3 of 4.
    # Set B {3, 4, 5} answered 3, 4. Each is predicted by the single other: 0 of 2.
    # Set C {6, 7, 8} answered 6, 6, 7. Each 6 is predicted by (6, 7), a tie,
    # half a hit. The 7 is predicted by (6, 6), a miss: 1 of 3.
    # Set {0, 1, 9} is judged once and does not count. Total: (3 + 0 + 1) / 9.
    triplets = (
        responses((0, 1, 2), [2, 2, 2, 0])
        + responses((3, 4, 5), [3, 4])
        + responses((6, 7, 8), [6, 6, 7])
        + responses((0, 1, 9), [9])
    )

    result = triplet_noise_ceiling(triplets)

    assert result == NoiseCeiling(value=4 / 9, n_sets=3, n_responses=9)


def test_ceiling_ignores_order_within_triplet():
    triplets = [[0, 1, 2], [1, 0, 2], [2, 0, 1]]  # odd ones out 2, 2, 1 of set {0, 1, 2}
    shuffled = [[1, 0, 2], [0, 1, 2], [0, 2, 1]]

    # The two 2s are each predicted by (2, 1), a tie: half a hit each. The 1 is a miss.
    assert triplet_noise_ceiling(triplets).value == pytest.approx(1 / 3, abs=1e-15)
    assert triplet_noise_ceiling(shuffled) == triplet_noise_ceiling(triplets)


def test_ceiling_min_responses():
    triplets = (
        responses((0, 1, 2), [2, 2, 2, 0])
        + responses((3, 4, 5), [3, 4])
        + responses((6, 7, 8), [6, 6, 7])
    )

    result = triplet_noise_ceiling(triplets, min_responses=3)

    assert result == NoiseCeiling(value=4 / 7, n_sets=2, n_responses=7)


def test_ceiling_full_agreement_is_one():
    triplets = responses((5, 1, 3), [3, 3, 3]) + responses((0, 2, 4), [0, 0])

    assert triplet_noise_ceiling(triplets).value == 1.0


def test_no_repeats_warns_and_returns_none():
    with pytest.warns(RuntimeWarning, match="noise ceiling cannot be estimated"):
        assert triplet_noise_ceiling([[0, 1, 2], [0, 1, 3]]) is None


def test_invalid_input_rejected():
    with pytest.raises(ValueError, match="min_responses"):
        triplet_noise_ceiling([[0, 1, 2]], min_responses=1)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        triplet_noise_ceiling([[0, 1]])


def test_ceiling_on_human_triplets(things_dir):
    triplets = np.loadtxt(things_dir / "human_triplets.txt", dtype=np.int64)

    result = triplet_noise_ceiling(triplets)

    # The file repeats 7 object sets, each judged twice; 8 of the 14 responses
    # agree with the other judgement of their set.
    assert result == NoiseCeiling(value=8 / 14, n_sets=7, n_responses=14)


def test_ceiling_counts_duplicate_rows():
    # Set {0, 1, 2} got the odd ones out 2, 2 (the same line twice) and 1. Each 2 is
    # predicted by the others (2, 1), a tie: half a hit. The 1 is predicted by
    # (2, 2), a miss. The duplicate counts as a second response: (0.5 + 0.5 + 0) / 3.
    with pytest.warns(UserWarning, match="too noisy"):
        counted = triplet_noise_ceiling([[0, 1, 2], [0, 1, 2], [0, 2, 1]])
    # The same choices with the pair in the other order give the same ceiling.
    with pytest.warns(UserWarning, match="too noisy"):
        reordered = triplet_noise_ceiling([[0, 1, 2], [1, 0, 2], [0, 2, 1]])

    assert counted == NoiseCeiling(value=1 / 3, n_sets=1, n_responses=3)
    assert reordered == counted


def test_ceiling_human_duplicates_counted(things_dir):
    triplets = np.loadtxt(things_dir / "human_triplets.txt", dtype=np.int64)
    _, copies = np.unique(triplets, axis=0, return_counts=True)

    with pytest.warns(UserWarning, match="too noisy"):
        result = triplet_noise_ceiling(triplets)

    # 3 of the 4 agreeing repeated sets are the same line twice. Dropping
    # those copies would leave 4 sets with 2 hits in 8, a ceiling of 0.25.
    assert int((copies - 1).sum()) == 3
    assert result.value == 8 / 14


def loop_ceiling(triplets):
    """Leave-one-out credit per response, written as a plain loop over object sets."""
    groups = {}
    for row in triplets:
        groups.setdefault(frozenset(row), []).append(row[2])
    credits = []
    for odd_ones in groups.values():
        if len(odd_ones) < 2:
            continue
        for position, odd in enumerate(odd_ones):
            others = Counter(odd_ones[:position] + odd_ones[position + 1 :])
            top = max(others.values())
            tied = [choice for choice, count in others.items() if count == top]
            credits.append(1 / len(tied) if odd in tied else 0.0)
    return sum(credits) / len(credits), len(credits)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ceiling_matches_plain_loop(seed):
    rng = np.random.default_rng(seed)
    sets = [rng.choice(12, size=3, replace=False) for _ in range(40)]
    rows = []
    for _ in range(400):
        objects = rng.permutation(sets[rng.integers(len(sets))])
        rows.append(objects.tolist())

    expected, n_responses = loop_ceiling(rows)
    result = triplet_noise_ceiling(rows)

    assert result.n_responses == n_responses
    assert result.value == pytest.approx(expected, abs=1e-12)


def test_ceiling_warns_below_minimum_responses():
    # 30 sets of 3 responses: 90 responses, below the minimum of 100.
    few = [row for start in range(0, 90, 3) for row in responses((start, start + 1, start + 2), [start] * 3)]
    with pytest.warns(UserWarning, match="rests on 90 responses in 30 repeated object sets"):
        result = triplet_noise_ceiling(few)
    assert result == NoiseCeiling(value=1.0, n_sets=30, n_responses=90)


def test_ceiling_without_warning_at_minimum():
    # 30 sets of 4 responses: 120 responses in 30 sets reach both minimums.
    enough = [row for start in range(0, 90, 3) for row in responses((start, start + 1, start + 2), [start] * 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = triplet_noise_ceiling(enough)
    assert result == NoiseCeiling(value=1.0, n_sets=30, n_responses=120)


@pytest.mark.parametrize(("value", "shown"), [(0.5, "0.5"), (np.nan, "nan")])
def test_noise_ceiling_rejects_non_integer_index(value, shown):
    triplets = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 2.0], [0.0, 2.0, value]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"row 2, column 2: value {shown} is not an integer object index"):
            triplet_noise_ceiling(triplets)


def test_noise_ceiling_accepts_whole_floats():
    # The two responses to {0, 1, 2} agree, so each predicts the other: ceiling 1.
    with pytest.warns(UserWarning, match="too noisy"):
        result = triplet_noise_ceiling(np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 2.0]]))
    assert result == NoiseCeiling(value=1.0, n_sets=1, n_responses=2)


def test_fractional_min_responses_rejected():
    """2.5 acted as 3 without saying so."""
    with pytest.raises(ValueError, match="min_responses must be an integer, got 2.5"):
        triplet_noise_ceiling(np.array([[0, 1, 2], [1, 0, 2]]), min_responses=2.5)
