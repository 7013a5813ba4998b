"""Reproducibility of embedding dimensions across runs with different seeds.

A dimension is reproducible when other runs find it again. The objects are
split into two halves. For a dimension of one run, its best-correlated
dimension in another run is found on the first half, and that pair is then
correlated on the second half, so the choice of the partner and its score
use different objects. The correlations with all other runs are averaged
with the Fisher z-transform:
``z = arctanh(clip(r, -0.999999, 0.999999))``, mean over runs, ``tanh`` back.
Clipping keeps ``arctanh`` finite for identical dimensions (``r = 1``), so a
perfectly reproduced dimension scores ``tanh(arctanh(0.999999)) = 0.999999``.
A run's reproducibility is the mean over its dimensions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dimalign._checks import check_integer
from dimalign._warnings import warn
from dimalign.analysis.matching import correlate_columns
from dimalign.io.objects import check_same_index

logger = logging.getLogger(__name__)

#: Correlations are clipped to [-R_CLIP, R_CLIP] before the Fisher z-transform.
R_CLIP = 0.999999

SPLIT_METHODS = ("odd_even", "random")


def split_halves(n_objects: int, method: str = "odd_even", random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split object indices into two halves.

    Args:
        n_objects (int): Number of objects (at least 6, so each half has 3).
        method (str): ``"odd_even"`` (even indices, then odd indices) or
            ``"random"`` (a random half, seeded by ``random_state``; the
            first half gets ``n_objects // 2`` objects).
        random_state (int): Seed of the random split.

    Returns:
        tuple[np.ndarray, np.ndarray]: Sorted indices of the two halves.

    Raises:
        ValueError: For fewer than 6 objects, an unknown ``method``, or a
            random split whose ``random_state`` is not an integer of at least 0.

    Examples:
        >>> [half.tolist() for half in split_halves(7)]
        [[0, 2, 4, 6], [1, 3, 5]]
    """
    if n_objects < 6:
        raise ValueError(f"{n_objects} objects are too few to split into halves: need at least 6")
    if method == "odd_even":
        return np.arange(0, n_objects, 2), np.arange(1, n_objects, 2)
    if method == "random":
        # The output records the seed, so None (fresh entropy) could not be repeated.
        check_integer("random_state", random_state, 0)
        permutation = np.random.default_rng(random_state).permutation(n_objects)
        half = n_objects // 2
        return np.sort(permutation[:half]), np.sort(permutation[half:])
    raise ValueError(f"unknown split method {method!r}: use one of {', '.join(SPLIT_METHODS)}")


def fisher_mean(correlations: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Average correlations through the Fisher z-transform.

    ``tanh(mean(arctanh(clip(r, -R_CLIP, R_CLIP))))``. The clip keeps r = ±1
    from becoming an infinite z, which would swamp every other value.

    Args:
        correlations (np.ndarray): Pearson correlations in ``[-1, 1]``, any shape.
        axis (int | None): The axis to average over, None for all values.

    Returns:
        np.ndarray: The averaged correlations, the shape of ``correlations``
        without ``axis`` (a 0-d array for ``axis=None``).

    Examples:
        >>> round(float(fisher_mean(np.array([0.5, 0.9]))), 4)
        0.7661
    """
    z = np.arctanh(np.clip(np.asarray(correlations, dtype=np.float64), -R_CLIP, R_CLIP))
    return np.tanh(z.mean(axis=axis))


@dataclass
class ReproducibilityResult:
    """Reproducibility of every run and every dimension.

    Attributes:
        run_scores (np.ndarray): Mean reproducibility of each run, shape ``(n_runs,)``.
        dim_scores (list[np.ndarray]): Per-dimension reproducibility of each run.
        pair_correlations (list[np.ndarray]): For each run, shape
            ``(n_dims, n_runs)``: the held-out correlation of each dimension with
            its partner in every run (NaN on the run's own column).
        split (dict): How the objects were split (method, seed, half sizes).
    """

    run_scores: np.ndarray
    dim_scores: list[np.ndarray]
    pair_correlations: list[np.ndarray]
    split: dict = field(default_factory=dict)

    @property
    def best_run(self) -> int:
        """Index of the run with the highest mean reproducibility (the first on ties).

        Raises:
            ValueError: If no run has a score (every run kept 0 dimensions).
        """
        if np.isnan(self.run_scores).all():
            raise ValueError("no run has any dimension, so none can be selected")
        return int(np.nanargmax(self.run_scores))


def reproducibility(
    embeddings: Sequence[np.ndarray | str | os.PathLike],
    *,
    split: str = "odd_even",
    random_state: int = 0,
    names: Sequence[str] | None = None,
) -> ReproducibilityResult:
    """Score how well other runs reproduce each run's dimensions.

    Args:
        embeddings (Sequence[np.ndarray | str | os.PathLike | estimator]): At
            least two embeddings of the same objects in the same row order,
            each ``(n_objects, n_dims_r)``, or their run folders or embedding
            files (read with :func:`dimalign.io.runs.load_embedding`), fitted
            VICE or SPoSE models (their ``embedding_``) or
            :class:`~dimalign.io.runs.EmbeddingResult` objects. The numbers
            of dimensions may differ.
        split (str): ``"odd_even"`` or ``"random"`` (see :func:`split_halves`).
        random_state (int): Seed of a random split.
        names (Sequence[str] | None): What errors, warnings and logs call each
            run. Defaults to the path of a run given by path, else ``run <index>``.

    Returns:
        ReproducibilityResult: Scores per run and per dimension.

    Raises:
        ValueError: With fewer than two runs, runs of different object counts
            or DataFrames whose indexes list their objects differently,
            or a run with NaN or inf weights (naming the run, object and dimension).
        NotFittedError: For a VICE or SPoSE before ``fit``.

    Warns:
        UserWarning: When a dimension is constant on one half (its correlations
            are 0), or a run kept no dimension (its score is NaN, and its
            partners in other runs score 0).
    """
    if names is None:
        names = [
            str(embedding) if isinstance(embedding, (str, os.PathLike)) else f"run {index}"
            for index, embedding in enumerate(embeddings)
        ]
    # correlate_columns scales each column by its largest absolute weight, so weights
    # near 1e200 or 1e-300 score like any others.
    arrays = _checked_runs(embeddings, names)
    first_half, second_half = split_halves(arrays[0].shape[0], split, random_state)

    n_runs = len(arrays)
    dim_scores, pair_correlations = [], []
    for run, reference in enumerate(arrays):
        held_out = np.full((reference.shape[1], n_runs), np.nan)
        for other_run, other in enumerate(arrays):
            if other_run == run:
                continue
            held_out[:, other_run] = _partner_scores(
                reference, other, (first_half, second_half), (names[run], names[other_run])
            )
        others = np.delete(held_out, run, axis=1)
        dim_scores.append(fisher_mean(others, axis=1))
        pair_correlations.append(held_out)

    empty = [names[run] for run, array in enumerate(arrays) if array.shape[1] == 0]
    if empty:
        warn(
            f"runs {empty} kept 0 dimensions: their reproducibility is NaN and they cannot be selected",
            UserWarning,
        )
    run_scores = np.array([scores.mean() if scores.size else np.nan for scores in dim_scores])
    if not np.isnan(run_scores).all():
        logger.info(
            "reproducibility of %d runs (%s split): best %s with %.3f, median %.3f",
            n_runs, split, names[int(np.nanargmax(run_scores))], np.nanmax(run_scores),
            float(np.nanmedian(run_scores)),
        )
    split_record = {
        "method": split,
        "random_state": random_state if split == "random" else None,
        "first_half_size": int(first_half.size),
        "second_half_size": int(second_half.size),
        "partner_chosen_on": "first half",
        "correlation_on": "second half",
    }
    return ReproducibilityResult(run_scores, dim_scores, pair_correlations, split_record)


def _checked_runs(embeddings: Sequence[Any], names: Sequence[str]) -> list[np.ndarray]:
    """Return every run as a float64 array, or raise ``ValueError`` naming the run that does not fit.

    Returns:
        list[np.ndarray]: One array per run, shape ``(n_objects, n_dims_r)``.
    """
    if len(names) != len(embeddings):
        raise ValueError(f"names has {len(names)} entries for {len(embeddings)} runs")
    for embedding, name in zip(embeddings[1:], names[1:]):
        check_same_index(embeddings[0], embedding, names[0], name)
    arrays = [_as_array(embedding, name) for embedding, name in zip(embeddings, names)]
    if len(arrays) < 2:
        raise ValueError(f"reproducibility needs at least two runs, got {len(arrays)}")
    n_objects = {array.shape[0] for array in arrays}
    if len(n_objects) != 1 or any(array.ndim != 2 for array in arrays):
        raise ValueError(
            "every run must be a 2-D embedding of the same objects, got shapes "
            f"{[array.shape for array in arrays]}"
        )
    for run, array in enumerate(arrays):
        bad = ~np.isfinite(array)
        if bad.any():
            row, column = (int(index) for index in np.argwhere(bad)[0])
            raise ValueError(
                f"{names[run]} contains NaN or inf in {int(bad.sum())} weights, the first at object "
                f"{row}, dimension {column}; reproducibility needs finite embeddings"
            )
    return arrays


def _partner_scores(
    reference: np.ndarray,
    other: np.ndarray,
    halves: tuple[np.ndarray, np.ndarray],
    names: tuple[str, str],
) -> np.ndarray:
    """Score each dimension of ``reference`` by how well a dimension of ``other`` reproduces it.

    The partner is the dimension of ``other`` with the highest correlation on
    the first half of the objects, and the score is their correlation on the
    second half, so the choice does not inflate the score.

    Args:
        reference (np.ndarray): Shape ``(n_objects, n_dims_reference)``.
        other (np.ndarray): Shape ``(n_objects, n_dims_other)``.
        halves (tuple[np.ndarray, np.ndarray]): Object indices of the two halves.
        names (tuple[str, str]): Names of the two runs in warnings.

    Returns:
        np.ndarray: Shape ``(n_dims_reference,)``. 0 where either run has no
        dimension, or a dimension is constant on the first half.
    """
    first_half, second_half = halves
    if other.shape[1] == 0 or reference.shape[1] == 0:
        # A run without dimensions reproduces nothing.
        return np.zeros(reference.shape[1])

    # Pick each dimension's partner on one half, then score it on the other.
    choosing = correlate_columns(
        reference[first_half], other[first_half],
        name_a=f"{names[0]} (first half)", name_b=f"{names[1]} (first half)",
    )
    # A dimension constant on the first half has no defined correlation
    # there, so it can neither choose a partner nor be chosen. Without
    # this, argmax over a row of zeros would pick dimension 0 as partner.
    # max == min instead of np.ptp == 0, because the subtraction in np.ptp
    # overflows for weights of both signs near the float maximum.
    reference_constant = reference[first_half].max(axis=0) == reference[first_half].min(axis=0)
    other_constant = other[first_half].max(axis=0) == other[first_half].min(axis=0)
    choosing[:, other_constant] = -np.inf
    partners = np.argmax(choosing, axis=1)

    scoring = correlate_columns(
        reference[second_half], other[second_half],
        name_a=f"{names[0]} (second half)", name_b=f"{names[1]} (second half)",
    )
    scores = scoring[np.arange(reference.shape[1]), partners]
    scores[reference_constant | other_constant.all()] = 0.0
    return scores


def _as_array(embedding: Any, name: str) -> np.ndarray:
    """Return a path's embedding, a fitted estimator's ``embedding_`` or an array, as float64."""
    from dimalign.io.runs import embedding_weights, load_embedding

    if isinstance(embedding, (str, os.PathLike)):
        return np.asarray(load_embedding(embedding).embedding, dtype=np.float64)
    return np.asarray(embedding_weights(embedding, name), dtype=np.float64)


__all__ = [
    "R_CLIP",
    "SPLIT_METHODS",
    "ReproducibilityResult",
    "fisher_mean",
    "reproducibility",
    "split_halves",
]
