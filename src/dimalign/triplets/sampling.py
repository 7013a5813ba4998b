"""Sampling of unique unordered triplets of objects.

A triplet is a set of three distinct objects. The C(m, 3) sets of m objects
are numbered by the combinatorial number system: the set ``i < j < k`` has
rank ``C(k, 3) + C(j, 2) + C(i, 1)``, which maps the sets one to one onto
``0 .. C(m, 3) - 1``. Sampling sets uniformly is then sampling integers
uniformly, and :func:`unrank_triplets` turns ranks back into objects. The
products ``k (k - 1) (k - 2)`` behind the ranks fit in int64 for up to
2,000,000 objects.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from dimalign._checks import check_random_state
from dimalign.io.triplets import sorted_unique, validate_triplets

logger = logging.getLogger(__name__)

MAX_OBJECTS = 2_000_000  # keeps m^3 below 2^63 in the int64 rank arithmetic


def count_triplets(n_objects: int) -> int:
    """Return the number C(n_objects, 3) of unordered triplets, as a Python int.

    Args:
        n_objects (int): Number of objects, at least 0; a whole float such as
            ``1e3`` counts as an integer.

    Returns:
        int: ``C(n_objects, 3)``, 0 for fewer than 3 objects.

    Raises:
        ValueError: If ``n_objects`` is negative or not a whole number.
    """
    n_objects = _whole_number(n_objects, "n_objects")
    if n_objects < 0:
        raise ValueError(f"n_objects must be >= 0, got {n_objects}")
    return math.comb(n_objects, 3)


def sample_triplets(
    n_objects: int,
    n_triplets: int,
    random_state: int | np.random.Generator | None = 0,
    replace: bool = False,
) -> np.ndarray:
    """Draw object triplets uniformly at random, unique unless ``replace`` is set.

    Each row is sorted ascending (``i < j < k``) and carries no choice; use
    :func:`dimalign.triplets.simulate_choices` to order it by a judgement.
    Without replacement the rows are distinct unordered sets in random order.

    Two strategies keep the work proportional to ``n_triplets``:

    - ``n_triplets < C(m, 3) / 2``: draw ranks uniformly and reject repeats in
      rounds. Each round draws the missing number divided by the expected
      acceptance rate, so a few rounds suffice because at least half of all
      sets are still free.
    - otherwise: permute all ``C(m, 3)`` ranks and keep the first
      ``n_triplets``. Here C(m, 3) is at most twice the output, so enumerating
      every set costs no more memory than the result.

    Args:
        n_objects (int): Number of objects m (at least 3, at most 2,000,000).
        n_triplets (int): Number of triplets n.
        random_state (int | np.random.Generator | None): Seed or generator.
        replace (bool): Draw each triplet independently, so sets may repeat
            and ``n_triplets`` may exceed C(m, 3).

    Returns:
        np.ndarray: int64 array of shape ``(n_triplets, 3)``.

    Raises:
        ValueError: If ``n_triplets`` exceeds C(m, 3) without ``replace``, a
            size is out of range or not a whole number, or ``random_state``
            is not a seed, a generator or None.

    Example:
        >>> sample_triplets(4, 4, random_state=0).tolist()  # all C(4, 3) = 4 sets
        [[0, 2, 3], [0, 1, 2], [0, 1, 3], [1, 2, 3]]
    """
    n_objects = _whole_number(n_objects, "n_objects")
    n_triplets = _whole_number(n_triplets, "n_triplets")
    if n_triplets < 0:
        raise ValueError(f"n_triplets must be >= 0, got {n_triplets}")
    if not 3 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be between 3 and {MAX_OBJECTS:,}, got {n_objects:,}")
    n_sets = count_triplets(n_objects)
    if n_triplets > n_sets and not replace:
        raise ValueError(
            f"{n_triplets:,} unique triplets requested, but {n_objects:,} objects form only "
            f"{n_sets:,} distinct triplets; request at most {n_sets:,} or sample with "
            "replace=True (CLI: --replace)"
        )
    rng = check_random_state(random_state)

    if replace:
        ranks = rng.integers(0, n_sets, size=n_triplets, dtype=np.int64)
        strategy = "with replacement"
    elif 2 * n_triplets >= n_sets:
        ranks = rng.permutation(n_sets)[:n_triplets]
        strategy = "by permuting all sets"
    else:
        ranks = _draw_unique_ranks(rng, n_sets, n_triplets)
        strategy = "by rejecting repeats"
    triplets = unrank_triplets(ranks)
    logger.info(
        "sampled %s triplets of %s objects %s (%.3g%% of the %s distinct triplets)",
        f"{n_triplets:,}", f"{n_objects:,}", strategy, 100.0 * n_triplets / n_sets, f"{n_sets:,}",
    )
    return triplets


def _whole_number(value: float, name: str) -> int:
    """Return ``value`` as an int, rejecting fractions that ``int()`` would truncate.

    Whole floats such as ``1e6`` are accepted, because callers often write sizes that way.
    """
    if isinstance(value, (int, np.integer)):
        return int(value)
    if not (np.isfinite(value) and float(value).is_integer()):
        raise ValueError(f"{name} must be a whole number, got {value}; pass an integer")
    return int(value)


def _draw_unique_ranks(rng: np.random.Generator, n_sets: int, n_triplets: int) -> np.ndarray:
    """Draw ``n_triplets`` distinct ranks below ``n_sets`` in random order.

    Every step treats all ranks alike: draw uniformly, drop repeats, keep a
    random subset of the surplus. So the resulting set is uniform over all
    sets of that size, and a final shuffle makes the order random too. Needs
    ``n_triplets < n_sets / 2`` to finish in a few rounds.
    """
    # Sorting beats np.unique here: numpy 2.4's unique is much slower on 1e7 int64.
    chosen = sorted_unique(rng.integers(0, n_sets, size=n_triplets, dtype=np.int64))
    n_rounds = 1

    while len(chosen) < n_triplets:
        missing = n_triplets - len(chosen)
        acceptance = 1.0 - len(chosen) / n_sets
        extra = rng.integers(0, n_sets, size=int(missing / acceptance * 1.1) + 16, dtype=np.int64)
        position = np.minimum(np.searchsorted(chosen, extra), len(chosen) - 1)
        extra = sorted_unique(extra[chosen[position] != extra])
        if len(extra) > missing:
            extra = extra[rng.choice(len(extra), size=missing, replace=False)]
        chosen = np.sort(np.concatenate([chosen, extra]))
        n_rounds += 1
    logger.debug("drew %d unique ranks in %d rounds", n_triplets, n_rounds)
    rng.shuffle(chosen)
    return chosen


def rank_triplets(triplets: np.ndarray) -> np.ndarray:
    """Return the rank ``C(k, 3) + C(j, 2) + i`` of each triplet's sorted objects.

    Args:
        triplets (np.ndarray): Integer array of shape ``(n, 3)``, any order within rows.

    Returns:
        np.ndarray: int64 ranks of shape ``(n,)``; equal ranks mean equal sets.

    Raises:
        ValueError: On a negative or non-integer index, an index of
            :data:`MAX_OBJECTS` or more (its rank would overflow int64), or a
            row that repeats an object (see :func:`dimalign.io.triplets.validate_triplets`).

    Example:
        >>> rank_triplets(np.array([[0, 1, 2], [2, 1, 0], [0, 1, 3]])).tolist()
        [0, 0, 1]
    """
    ordered = np.sort(validate_triplets(triplets, None, "triplets to rank"), axis=1)
    too_large = np.flatnonzero(ordered[:, 2] >= MAX_OBJECTS)
    if too_large.size:
        row = int(too_large[0])
        raise ValueError(
            f"triplet row {row} has object index {int(ordered[row, 2]):,}, but ranks are "
            f"computed in int64 only for indices below {MAX_OBJECTS:,}"
        )
    i, j, k = ordered[:, 0], ordered[:, 1], ordered[:, 2]
    return k * (k - 1) * (k - 2) // 6 + j * (j - 1) // 2 + i


def unrank_triplets(ranks: np.ndarray) -> np.ndarray:
    """Return the sorted triplet ``(i, j, k)`` of each rank (inverse of :func:`rank_triplets`).

    ``k`` is the largest integer with ``C(k, 3) <= rank``, then ``j`` the largest
    with ``C(j, 2) <= rank - C(k, 3)``, and ``i`` the remainder. Floating-point
    roots give first guesses that integer steps then correct.

    Args:
        ranks (np.ndarray): Non-negative integer ranks below C(2,000,000, 3),
            shape ``(n,)``; whole floats are accepted.

    Returns:
        np.ndarray: int64 array of shape ``(n, 3)`` with ``i < j < k`` in each row.

    Raises:
        ValueError: On a rank that is not a whole number, is negative or is
            not below C(2,000,000, 3), naming the first such rank.

    Example:
        >>> unrank_triplets(np.array([0, 1, 2])).tolist()
        [[0, 1, 2], [0, 1, 3], [0, 2, 3]]
    """
    ranks = _check_ranks(np.asarray(ranks).reshape(-1))
    triplets = np.empty((len(ranks), 3), dtype=np.int64)
    # Blocks of 2^18 ranks keep the temporaries in the CPU cache, which makes
    # 2e7 ranks several times faster than whole-array steps.
    for start in range(0, len(ranks), _UNRANK_BLOCK):
        stop = start + _UNRANK_BLOCK
        triplets[start:stop] = _unrank_block(ranks[start:stop])
    return triplets


def _check_ranks(ranks: np.ndarray) -> np.ndarray:
    """Return ``ranks`` as int64, or raise ValueError for a rank that has no triplet.

    Ranks from C(MAX_OBJECTS, 3) on are beyond what :func:`rank_triplets`
    produces. From about 1.5e18 on, ``6 * rank`` overflows int64, and the
    search in :func:`_unrank_block` then never ends.
    """
    if ranks.dtype.kind == "f":
        whole = np.isfinite(ranks) & (ranks == np.rint(ranks))
        if not whole.all():
            position = int(np.flatnonzero(~whole)[0])
            raise ValueError(f"ranks must be whole numbers, got {float(ranks[position])} at position {position}")
    elif ranks.size and ranks.dtype.kind not in "iu":
        raise ValueError(f"ranks must be integers, got dtype {ranks.dtype}")
    # C(MAX_OBJECTS, 3) is about 1.3e18, below the int64 maximum of about 9.2e18.
    n_sets = count_triplets(MAX_OBJECTS)
    outside = np.flatnonzero((ranks < 0) | (ranks >= n_sets))
    if outside.size:
        position = int(outside[0])
        raise ValueError(
            f"ranks must lie in [0, {n_sets:,}), got {int(ranks[position])} at position {position}"
        )
    return ranks.astype(np.int64)


_UNRANK_BLOCK = 1 << 18


def _unrank_block(ranks: np.ndarray) -> np.ndarray:
    # 6 C(k, 3) = k (k - 1) (k - 2) = (k - 1)^3 - (k - 1), so k ~ cbrt(6 r) + 1.
    six_ranks = 6 * ranks
    k = np.floor(np.cbrt(six_ranks.astype(np.float64))).astype(np.int64) + 1
    np.maximum(k, 2, out=k)
    _step_to_floor(k, six_ranks, lambda x: x * (x - 1) * (x - 2))
    remainder = ranks - k * (k - 1) * (k - 2) // 6

    # 2 C(j, 2) = j (j - 1), so j ~ (1 + sqrt(1 + 8 r)) / 2.
    two_remainders = 2 * remainder
    j = np.sqrt(1.0 + 4.0 * two_remainders.astype(np.float64))
    j = np.floor((1.0 + j) / 2.0).astype(np.int64)
    np.maximum(j, 1, out=j)
    _step_to_floor(j, two_remainders, lambda x: x * (x - 1))
    i = remainder - j * (j - 1) // 2
    return np.stack([i, j, k], axis=1)


def _step_to_floor(x: np.ndarray, target: np.ndarray, function) -> None:
    """Move ``x`` in place to the largest value with ``function(x) <= target``.

    ``function`` must be increasing. The floating-point guesses are off by at
    most a unit or two, so the loops touch only the few rows that need a step.
    """
    rows = np.flatnonzero(function(x) > target)
    while len(rows):
        x[rows] -= 1
        rows = rows[function(x[rows]) > target[rows]]
    rows = np.flatnonzero(function(x + 1) <= target)
    while len(rows):
        x[rows] += 1
        rows = rows[function(x[rows] + 1) <= target[rows]]
