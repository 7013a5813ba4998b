"""Noise ceiling of odd-one-out accuracy from triplets judged more than once.

When several people judge the same three objects, they do not always agree.
No model can predict a person's choice better than the consensus of the
others, so the accuracy of that consensus bounds the attainable accuracy.

For each object set judged by at least two people, every response is
predicted by the majority choice among the other responses of that set
(leave-one-out). When several choices tie for the majority among the others,
the response gets ``1/m`` of a hit if it is one of the ``m`` tied choices (the
expected accuracy of picking among them at random). The ceiling is the mean
over all responses in repeated sets.

Every row counts as one response, including a row that repeats another line
exactly. A triplet file stores only ``i j k`` per row, with no participant
or trial, so two people who chose the same odd one out and listed the pair in
the same order write the same line. Dropping such copies would turn agreeing
sets into single responses and bias the ceiling down: in the THINGS
``human_triplets.txt``, 3 of the 4 agreeing repeated sets are one line written
twice, and dropping the copies lowers the ceiling from 8/14 to 2/8. Remove
copies before the call when they are known to be repeated records of one
response.

Example: three responses to one set chose the odd ones out ``1, 1, 2``. Each ``1`` is
predicted by the others ``{1, 2}``, a tie, which gives half a hit. The ``2`` is
predicted by ``{1, 1}``, a miss. The ceiling is ``(0.5 + 0.5 + 0) / 3 = 1/3``.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dimalign._warnings import warn

logger = logging.getLogger(__name__)

#: Below this many responses the ceiling comes with a warning. The ceiling is
#: a mean of per-response credits in [0, 1], whose standard error is at most
#: 0.5 / sqrt(n) for independent responses, so 100 responses bound it at 0.05.
#: NOTE: 0.05 is still larger than the gaps between published model accuracies
#: on THINGS (0.645 to 0.659), so the minimum flags clearly unusable ceilings
#: and passing it does not make a ceiling precise.
MIN_RELIABLE_RESPONSES = 100

#: Below this many repeated object sets the ceiling comes with a warning,
#: because responses to one set are not independent (they share its objects)
#: and a few sets stand for few object combinations.
MIN_RELIABLE_SETS = 30


@dataclass(frozen=True)
class NoiseCeiling:
    """Leave-one-out consensus accuracy over repeated triplets.

    Attributes:
        value (float): Mean accuracy of the leave-one-out majority, in ``[0, 1]``.
        n_sets (int): Object sets with at least ``min_responses`` responses.
        n_responses (int): Responses in those sets (the number of predictions averaged).
    """

    value: float
    n_sets: int
    n_responses: int


def triplet_noise_ceiling(
    triplets: np.ndarray | Sequence[Sequence[int]], min_responses: int = 2
) -> NoiseCeiling | None:
    """Estimate the noise ceiling from object sets judged more than once.

    Args:
        triplets (array-like): Shape ``(n, 3)``; the last column is the odd one
            out. Rows with the same three objects in any order are one set.
        min_responses (int): Minimum responses for a set to count (at least 2,
            since leave-one-out needs one other response).

    Returns:
        NoiseCeiling | None: None, with a warning, when no set has
        ``min_responses`` responses.

    Warns:
        RuntimeWarning: When no set is repeated.
        UserWarning: When the ceiling rests on fewer than
            :data:`MIN_RELIABLE_RESPONSES` responses or :data:`MIN_RELIABLE_SETS`
            sets, so that it is too noisy to compare with model accuracies.

    Raises:
        ValueError: If the triplets are not valid for
            :func:`dimalign.io.triplets.validate_triplets`: not of shape
            ``(n, 3)``, a value that is not a whole number (such as 0.5 or
            NaN), a negative index, or a row that repeats an object. The
            message names the row and column.
    """
    from dimalign.io.triplets import validate_triplets

    if isinstance(min_responses, bool) or not isinstance(min_responses, numbers.Integral):
        raise ValueError(f"min_responses must be an integer, got {min_responses!r}")
    if min_responses < 2:
        raise ValueError(f"min_responses must be at least 2, got {min_responses}")
    rows = validate_triplets(np.asarray(triplets), None)

    # Identify each set by its sorted objects, and each choice by the position
    # of the odd one out within the sorted set (0, 1 or 2).
    object_sets = np.sort(rows, axis=1)
    choices = np.argmax(object_sets == rows[:, 2:3], axis=1)
    _, set_ids, set_sizes = np.unique(
        object_sets, axis=0, return_inverse=True, return_counts=True
    )
    set_ids = set_ids.reshape(-1)
    repeated = set_sizes[set_ids] >= min_responses
    if not repeated.any():
        warn(
            f"no object set was judged {min_responses} or more times, so the noise "
            "ceiling cannot be estimated",
            RuntimeWarning,
        )
        return None

    set_ids, choices = set_ids[repeated], choices[repeated]
    choice_counts = np.zeros((set_sizes.size, 3), dtype=np.int64)
    np.add.at(choice_counts, (set_ids, choices), 1)

    # Counts among the other responses of the same set, one row per response.
    others = choice_counts[set_ids].copy()
    others[np.arange(choices.size), choices] -= 1
    is_majority = others == others.max(axis=1, keepdims=True)
    credit = is_majority[np.arange(choices.size), choices] / is_majority.sum(axis=1)

    result = NoiseCeiling(
        value=float(credit.mean()),
        n_sets=int(np.unique(set_ids).size),
        n_responses=int(choices.size),
    )
    if result.n_responses < MIN_RELIABLE_RESPONSES or result.n_sets < MIN_RELIABLE_SETS:
        warn(
            f"the noise ceiling {result.value:.4f} rests on {result.n_responses} responses in "
            f"{result.n_sets} repeated object sets, fewer than the minimum of "
            f"{MIN_RELIABLE_RESPONSES} responses and {MIN_RELIABLE_SETS} sets, so it is too noisy "
            "to compare with model accuracies",
            UserWarning,
        )
    logger.info(
        "noise ceiling %.4f from %d responses in %d repeated object sets",
        result.value,
        result.n_responses,
        result.n_sets,
    )
    return result
