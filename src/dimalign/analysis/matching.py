"""Matching the dimensions of two embeddings of the same objects.

Two embeddings (say human and DNN) describe the same objects with different
dimensions. Their dimensions are compared by the Pearson correlation of their
weights over objects. Each human dimension is matched to a DNN dimension in
one of three ways:

- ``"with_replacement"``: its most correlated DNN dimension, so a DNN
  dimension can serve several human dimensions;
- ``"greedy"``: without replacement, taking the highest remaining
  correlation repeatedly and removing its row and column (the procedure of
  Mahner et al. 2025);
- ``"optimal"``: the assignment that maximises the total correlation
  (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``).

The cumulative RSA then adds the matched DNN dimensions one at a time, rebuilds
the DNN similarity matrix from that subset, and correlates it with the human
one. Finally, for each matched pair, the objects that are high on both
dimensions, only on the human one, and only on the DNN one are listed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata
from tqdm.auto import tqdm

from dimalign._checks import check_integer
from dimalign._progress import progress_disabled
from dimalign._warnings import warn
from dimalign.io.files import count_of

logger = logging.getLogger(__name__)

MATCHING_METHODS = ("with_replacement", "greedy", "optimal")


# -- correlations between dimensions ------------------------------------------


def correlate_columns(
    a: np.ndarray, b: np.ndarray, *, name_a: str = "first", name_b: str = "second"
) -> np.ndarray:
    """Pearson correlation of every column of ``a`` with every column of ``b``.

    A column with zero variance (all values equal) has no defined correlation.
    Its correlations are set to 0, never NaN, and a warning names the columns.

    Args:
        a (np.ndarray): Shape ``(n_objects, n_a)``.
        b (np.ndarray): Shape ``(n_objects, n_b)``.
        name_a (str): Name of ``a`` in the warning.
        name_b (str): Name of ``b`` in the warning.

    Returns:
        np.ndarray: Correlations, shape ``(n_a, n_b)``, each in [-1, 1].

    Raises:
        ValueError: If the shapes do not fit or an array contains NaN or inf
            (naming the first row and column).

    Examples:
        >>> a = np.array([[1.0], [2.0], [4.0]])
        >>> correlate_columns(a, np.hstack([a, -a])).tolist()
        [[1.0, -1.0]]
    """
    a, b = _check_embedding_pair(a, b, name_a, name_b)
    # One product of unit-norm centred columns, r_pq = sum_n a_np * b_nq, instead of
    # np.corrcoef, which computes all (n_a + n_b)^2 pairs and gives NaN for constant columns.
    standardised_a = _standardise_columns(a, name_a)
    standardised_b = _standardise_columns(b, name_b)
    correlations = standardised_a.T @ standardised_b
    return np.clip(correlations, -1.0, 1.0)


def _check_embedding_pair(a: Any, b: Any, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    """Convert two embeddings of the same objects to float64 arrays and check that their columns can be correlated.

    Raises:
        ValueError: If the shapes do not fit, an array contains NaN or inf
            (naming the first row and column), or two DataFrames list their
            objects differently.
    """
    from dimalign.io.objects import check_same_index
    from dimalign.io.runs import embedding_weights

    check_same_index(a, b, "a", "b")
    a = np.asarray(embedding_weights(a, f"the {name_a} embedding"), dtype=np.float64)
    b = np.asarray(embedding_weights(b, f"the {name_b} embedding"), dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"both arrays must be 2-D with the same number of rows (objects), "
            f"got {a.shape} and {b.shape}"
        )
    for name, array in ((name_a, a), (name_b, b)):
        bad = ~np.isfinite(array)
        if bad.any():
            rows, columns = np.nonzero(bad)
            raise ValueError(
                f"the {name} embedding contains NaN or inf in {int(bad.sum())} entries, the first "
                f"at row {int(rows[0])}, column {int(columns[0])}; correlations need finite weights"
            )
    return a, b


def _standardise_columns(x: np.ndarray, name: str, *, warn_constant: bool = True) -> np.ndarray:
    """Centre each column and scale it to unit norm; constant columns become 0."""
    # max == min instead of np.ptp == 0, because the subtraction in np.ptp
    # overflows for weights of both signs near the float maximum.
    constant = x.max(axis=0) == x.min(axis=0)
    if constant.any() and warn_constant:
        columns = np.flatnonzero(constant)
        warn(
            f"{columns.size} dimension(s) of the {name} embedding have zero variance over "
            f"these objects (columns {columns[:20].tolist()}); their correlations are set to 0",
            UserWarning,
        )
    # r does not change with a positive column scale. Dividing by the largest
    # absolute weight first keeps the squares below finite and nonzero for
    # weights near 1e200 or 1e-300, which would otherwise give NaN.
    largest = np.abs(x).max(axis=0)
    largest[largest == 0] = 1.0
    scaled = x / largest
    centred = scaled - scaled.mean(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0))
    norms[constant] = 1.0
    centred[:, constant] = 0.0
    return centred / norms


# -- matching -----------------------------------------------------------------


@dataclass(frozen=True)
class Matching:
    """Matched dimension pairs, sorted by decreasing correlation.

    Attributes:
        method (str): One of :data:`MATCHING_METHODS`.
        human_dims (np.ndarray): Human dimension of each pair, shape ``(n_pairs,)``.
        dnn_dims (np.ndarray): Matched DNN dimension, shape ``(n_pairs,)``.
        correlations (np.ndarray): Pearson r of each pair, shape ``(n_pairs,)``.
    """

    method: str
    human_dims: np.ndarray
    dnn_dims: np.ndarray
    correlations: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        """Return the pairs as a table with columns rank, method, human_dim, dnn_dim, r."""
        return pd.DataFrame(
            {
                "rank": np.arange(1, self.correlations.size + 1),
                "method": self.method,
                "human_dim": self.human_dims,
                "dnn_dim": self.dnn_dims,
                "r": self.correlations,
            }
        )


def match_dimensions(
    human: np.ndarray,
    dnn: np.ndarray,
    method: str = "greedy",
    *,
    correlations: np.ndarray | None = None,
) -> Matching:
    """Match every human dimension to a DNN dimension.

    Args:
        human (np.ndarray): Human embedding, shape ``(n_objects, n_human)``.
        dnn (np.ndarray): DNN embedding of the same objects in the same row
            order, shape ``(n_objects, n_dnn)``.
        method (str): ``"with_replacement"``, ``"greedy"`` or ``"optimal"``.
        correlations (np.ndarray | None): Precomputed
            ``correlate_columns(human, dnn)``, to share between methods.

    Returns:
        Matching: One pair per human dimension, sorted by decreasing correlation.

    Raises:
        ValueError: For an unknown method, when a method without
            replacement gets more human than DNN dimensions, or for two
            DataFrames whose indexes list their objects differently.

    Examples:
        >>> human = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
        >>> match_dimensions(human, human[:, ::-1], "greedy").dnn_dims.tolist()
        [1, 0]
    """
    from dimalign.io.objects import check_same_index

    if method not in MATCHING_METHODS:
        raise ValueError(f"unknown matching method {method!r}: use one of {', '.join(MATCHING_METHODS)}")
    check_same_index(human, dnn, "human", "dnn")
    if correlations is None:
        correlations = correlate_columns(human, dnn, name_a="human", name_b="DNN")
    n_human, n_dnn = correlations.shape
    if method != "with_replacement" and n_human > n_dnn:
        raise ValueError(
            f"matching without replacement ({method!r}) needs at least as many DNN as human "
            f"dimensions, got {n_human} human and {n_dnn} DNN dimensions; use "
            "method='with_replacement', or swap the roles of the two embeddings"
        )

    if method == "with_replacement":
        human_dims = np.arange(n_human)
        dnn_dims = np.argmax(correlations, axis=1)
    elif method == "greedy":
        human_dims, dnn_dims = _greedy_pairs(correlations)
    else:
        human_dims, dnn_dims = linear_sum_assignment(correlations, maximize=True)

    pair_correlations = correlations[human_dims, dnn_dims]
    order = np.lexsort((human_dims, -pair_correlations))
    return Matching(
        method=method,
        human_dims=np.asarray(human_dims)[order],
        dnn_dims=np.asarray(dnn_dims)[order],
        correlations=pair_correlations[order],
    )


def _greedy_pairs(correlations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Take the highest remaining correlation, remove its row and column, repeat."""
    remaining = correlations.astype(np.float64, copy=True)
    human_dims, dnn_dims = [], []
    for _ in range(correlations.shape[0]):
        row, column = np.unravel_index(np.argmax(remaining), remaining.shape)
        human_dims.append(row)
        dnn_dims.append(column)
        remaining[row, :] = -np.inf
        remaining[:, column] = -np.inf
    return np.array(human_dims, dtype=np.int64), np.array(dnn_dims, dtype=np.int64)


def match_all(human: np.ndarray, dnn: np.ndarray, *, correlations: np.ndarray | None = None) -> dict[str, Matching]:
    """Run every matching method that applies (the ones without replacement need n_dnn >= n_human).

    Args:
        human (np.ndarray): Human embedding, shape ``(n_objects, n_human)``.
        dnn (np.ndarray): DNN embedding of the same objects, shape ``(n_objects, n_dnn)``.
        correlations (np.ndarray | None): ``correlate_columns(human, dnn)``,
            if already computed (its warnings then come only once).

    Returns:
        dict[str, Matching]: One matching per method, keyed by method name.

    Warns:
        UserWarning: When ``n_human > n_dnn``, so only matching with replacement runs.
    """
    if correlations is None:
        correlations = correlate_columns(human, dnn, name_a="human", name_b="DNN")
    methods = MATCHING_METHODS if correlations.shape[0] <= correlations.shape[1] else ("with_replacement",)
    if len(methods) == 1:
        n_human, n_dnn = correlations.shape
        warn(
            f"{n_human} human but only {count_of(n_dnn, 'DNN dimension')}: only matching with replacement is "
            "possible, so a DNN dimension may serve several human dimensions",
            UserWarning,
        )
    return {
        method: match_dimensions(human, dnn, method, correlations=correlations) for method in methods
    }


def chance_matchings(
    human: np.ndarray,
    dnn: np.ndarray,
    methods: Sequence[str],
    *,
    n_permutations: int = 10,
    random_state: int = 0,
) -> dict[str, np.ndarray]:
    """Match the human dimensions to DNN embeddings whose rows are permuted, as a chance level.

    Permuting the rows of the DNN embedding breaks the correspondence of
    objects but keeps each dimension's distribution of weights. The matched
    correlations of the permuted embeddings are then what the matching finds
    by chance with these numbers of objects and dimensions.

    Args:
        human (np.ndarray): Human embedding, shape ``(n_objects, n_human)``.
        dnn (np.ndarray): DNN embedding of the same objects, shape ``(n_objects, n_dnn)``.
        methods (Sequence[str]): Matching methods to run, from :data:`MATCHING_METHODS`.
        n_permutations (int): Row permutations of the DNN embedding.
        random_state (int): Seed of the permutations.

    Returns:
        dict[str, np.ndarray]: Per method, the matched correlations of each
        permutation sorted in decreasing order, shape ``(n_permutations, n_pairs)``.

    Raises:
        ValueError: For an unknown method, a method without replacement and
            more human than DNN dimensions, a negative or non-integer
            ``n_permutations``, or embeddings that :func:`correlate_columns`
            rejects (shapes that do not fit, NaN or inf).
    """
    check_integer("n_permutations", n_permutations, 0)
    unknown = [method for method in methods if method not in MATCHING_METHODS]
    if unknown:
        raise ValueError(f"unknown matching method {unknown[0]!r}: use one of {', '.join(MATCHING_METHODS)}")
    human, dnn = _check_embedding_pair(human, dnn, "human", "DNN")
    if human.shape[1] > dnn.shape[1] and any(method != "with_replacement" for method in methods):
        raise ValueError(
            f"matching without replacement needs at least as many DNN as human dimensions, got "
            f"{human.shape[1]} human and {dnn.shape[1]} DNN dimensions; use only 'with_replacement'"
        )
    # Centring and scaling a column do not depend on the row order, so the columns
    # are standardised once and only the rows of the standardised DNN side are
    # permuted. The real matching has already warned about constant columns.
    standardised_human = _standardise_columns(human, "human", warn_constant=False)
    standardised_dnn = _standardise_columns(dnn, "DNN", warn_constant=False)
    generator = np.random.default_rng(random_state)
    results: dict[str, list[np.ndarray]] = {method: [] for method in methods}
    permutations = tqdm(
        range(n_permutations), desc="chance matchings", unit="permutation", disable=progress_disabled(), leave=False
    )
    for _ in permutations:
        rows = generator.permutation(human.shape[0])
        correlations = np.clip(standardised_human.T @ standardised_dnn[rows], -1.0, 1.0)
        for method in methods:
            matching = match_dimensions(human, dnn, method, correlations=correlations)
            results[method].append(matching.correlations)
    # Every method matches each human dimension once, so every permutation gives n_human pairs.
    return {method: np.array(values).reshape(n_permutations, human.shape[1]) for method, values in results.items()}


# -- cumulative RSA -----------------------------------------------------------


@dataclass(frozen=True)
class CumulativeRSA:
    """RSA between the human similarity matrix and DNN subsets of growing size.

    Attributes:
        dnn_dims (np.ndarray): DNN dimensions in the order they were added.
        r (np.ndarray): Correlation after adding each one, shape ``(n_steps,)``.
        r_full (float): Correlation with the full DNN embedding.
        share (float): The share of explained variance that defines ``n_dims_for_share``.
        n_dims_for_share (int | None): The fewest dimensions ``k`` with
            ``r_k^2 >= share * r_full^2`` (and ``r_k > 0``), or None if no
            prefix reaches it or the share is undefined (:attr:`share_defined`).
        r_full_interval (tuple[float, float] | None): A confidence interval of
            ``r_full``, such as the bootstrap interval of the RSA, or None.
    """

    dnn_dims: np.ndarray
    r: np.ndarray
    r_full: float
    share: float
    n_dims_for_share: int | None
    r_full_interval: tuple[float, float] | None = None

    @property
    def share_defined(self) -> bool:
        """Whether ``r_full`` is above 0, and so is its interval when one is given.

        A share of the full model's r² means nothing when that r may be 0: any
        single dimension with a small positive r then "explains" many times
        the full model's variance.
        """
        if not self.r_full > 0:
            return False
        return self.r_full_interval is None or self.r_full_interval[0] > 0

    def to_frame(self) -> pd.DataFrame:
        """Return one row per step: n_dims, added dnn_dim, r, r2, share of the full r² (NaN if undefined)."""
        r2 = self.r**2
        return pd.DataFrame(
            {
                "n_dims": np.arange(1, self.r.size + 1),
                "dnn_dim": self.dnn_dims,
                "r": self.r,
                "r2": r2,
                "share_of_full_r2": r2 / self.r_full**2 if self.share_defined else np.nan,
            }
        )


def matched_order(matching: Matching, n_dnn: int, correlations: np.ndarray | None = None) -> np.ndarray:
    """Order DNN dimensions for the cumulative RSA.

    The matched DNN dimensions come first, in the order of their pairs'
    correlations (a dimension matched twice with replacement appears once, at
    its best pair). The unmatched DNN dimensions follow, by their highest
    correlation with any human dimension when ``correlations`` is given,
    else by index.

    Args:
        matching (Matching): The matched pairs.
        n_dnn (int): Number of DNN dimensions.
        correlations (np.ndarray | None): ``correlate_columns(human, dnn)``,
            shape ``(n_human, n_dnn)``.

    Returns:
        np.ndarray: Every DNN dimension once, int64, shape ``(n_dnn,)``.
    """
    order: list[int] = []
    for dim in matching.dnn_dims.tolist():
        if dim not in order:
            order.append(dim)
    rest = [dim for dim in range(n_dnn) if dim not in order]
    if correlations is not None and rest:
        best = correlations.max(axis=0)
        rest.sort(key=lambda dim: (-best[dim], dim))
    return np.array(order + rest, dtype=np.int64)


def dims_for_share(r: np.ndarray, r_full: float, share: float = 0.95) -> int | None:
    """Return the fewest steps ``k`` (1-based) with ``r_k^2 >= share * r_full^2`` and ``r_k > 0``.

    None when no step reaches it, or when ``r_full <= 0``, for which a share
    of the full model's r² has no meaning.

    Args:
        r (np.ndarray): The correlation after each step, shape ``(n_steps,)``.
            NaN steps never reach the share.
        r_full (float): The correlation of the full model.
        share (float): The share of ``r_full^2`` to reach.

    Returns:
        int | None: The 1-based step, or None.
    """
    if not r_full > 0:
        return None
    reached = np.flatnonzero((np.asarray(r) ** 2 >= share * r_full**2) & (np.asarray(r) > 0))
    return int(reached[0]) + 1 if reached.size else None


# Seconds between two progress lines of the cumulative RSA in the log.
_PROGRESS_INTERVAL_S = 60.0


def cumulative_rsa(
    human_similarity: np.ndarray,
    dnn_embedding: np.ndarray,
    order: Sequence[int],
    *,
    share: float = 0.95,
    similarity: Callable[[np.ndarray], np.ndarray] | None = None,
    method: str = "pearson",
    full_similarity: np.ndarray | None = None,
    r_full_interval: tuple[float, float] | None = None,
) -> CumulativeRSA:
    """Correlate the human similarity matrix with DNN subsets of growing size.

    For ``k = 1 .. len(order)`` the DNN similarity matrix is rebuilt from
    ``dnn_embedding[:, order[:k]]`` and correlated (upper triangle) with
    ``human_similarity``.

    Args:
        human_similarity (np.ndarray): Shape ``(n_objects, n_objects)``.
        dnn_embedding (np.ndarray): Shape ``(n_objects, n_dnn)``.
        order (Sequence[int]): DNN dimensions in the order to add them
            (see :func:`matched_order`).
        share (float): Share of the full model's explained variance to report.
        similarity (Callable | None): Builds a similarity matrix from an
            embedding; defaults to :func:`dimalign.analysis.similarity.similarity_matrix`.
        method (str): ``"pearson"`` or ``"spearman"``, passed to :func:`dimalign.analysis.rsa.rsa`.
        full_similarity (np.ndarray | None): The DNN similarity matrix of all
            dimensions, if already computed with ``similarity``.
        r_full_interval (tuple[float, float] | None): A confidence interval of
            the full model's r, such as the bootstrap interval of the RSA.
            When it contains 0 (or is NaN) no share is meaningful, and
            ``n_dims_for_share`` is None.

    Returns:
        CumulativeRSA: The curve and the number of dimensions for ``share``.
            A step whose DNN similarity is constant has r = NaN.

    Raises:
        ValueError: If the full DNN similarity or the human one is constant,
            or ``order`` is empty, names a dimension twice or one that the
            DNN embedding does not have.

    Warns:
        RuntimeWarning: Naming the steps whose DNN similarity is constant.
    """
    from dimalign.analysis.rsa import ConstantInputError, rsa

    from dimalign.io.runs import embedding_weights

    if similarity is None:
        from dimalign.analysis.similarity import similarity_matrix as similarity
    dnn_embedding = np.asarray(embedding_weights(dnn_embedding, "the DNN embedding"), dtype=np.float64)
    if dnn_embedding.ndim != 2:
        raise ValueError(f"the DNN embedding must be 2-D (n_objects, n_dnn), got shape {dnn_embedding.shape}")
    order = _check_order(order, dnn_embedding.shape[1])
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share={share} is invalid: use a value in (0, 1]")

    full = similarity(dnn_embedding) if full_similarity is None else full_similarity
    r_full = float(rsa(human_similarity, full, method=method))
    values = np.empty(order.size)
    constant_steps = []
    logger.info(
        "cumulative RSA: rebuilding the DNN similarity matrix for %d prefixes of DNN dimensions", order.size
    )
    last_report = time.monotonic()
    for step in range(order.size):
        subset = similarity(dnn_embedding[:, order[: step + 1]])
        try:
            values[step] = rsa(human_similarity, subset, method=method)
        except ConstantInputError:
            # A prefix of dimensions that are zero for all but one object predicts one similarity for every pair.
            values[step] = np.nan
            constant_steps.append(step + 1)
        logger.debug("cumulative RSA: %d DNN dimensions -> r = %.4f", step + 1, values[step])
        # Each step is a whole similarity matrix (seconds on 1,854 objects), so
        # the log shows progress about once a minute.
        if time.monotonic() - last_report >= _PROGRESS_INTERVAL_S and step + 1 < order.size:
            logger.info("cumulative RSA: %d of %d steps done", step + 1, order.size)
            last_report = time.monotonic()
    if constant_steps:
        warn(
            f"the DNN similarity of the first {constant_steps[:20]} added dimensions is constant over "
            "the objects, so the cumulative RSA at those steps is undefined (NaN)",
            RuntimeWarning,
        )
    curve = CumulativeRSA(
        dnn_dims=order, r=values, r_full=r_full, share=share, n_dims_for_share=None,
        r_full_interval=None if r_full_interval is None else (float(r_full_interval[0]), float(r_full_interval[1])),
    )
    # The count comes from the point estimate of r_full, so it is only given
    # when the interval shows that r_full is above 0.
    if curve.share_defined:
        curve = dataclasses.replace(curve, n_dims_for_share=dims_for_share(values, r_full, share))
    logger.info("cumulative RSA: %s", describe_share(curve))
    return curve


def describe_share(curve: CumulativeRSA) -> str:
    """Describe the full model's r, its interval and the dimensions for the share in one sentence.

    Args:
        curve (CumulativeRSA): The curve.

    Returns:
        str: Such as ``full r = 0.411, bootstrap interval [0.396, 0.427]; the
        first 9 of 36 DNN dimensions in matched order together reach 95% of the full
        r²``, or the reason why no share is meaningful.
    """
    interval = curve.r_full_interval
    no_count = (
        "so no share of its r² is meaningful and no number of DNN dimensions for "
        f"{100 * curve.share:.0f}% is given"
    )
    if not curve.r_full > 0:
        return f"full r = {curve.r_full:.3f} is not above 0, {no_count}"
    if interval is not None and math.isnan(interval[0]):
        return (
            f"full r = {curve.r_full:.3f}, but no bootstrap sample gave a correlation, so it is unknown "
            f"whether that r differs from 0, {no_count}"
        )
    if not curve.share_defined:
        return (
            f"full r = {curve.r_full:.3f}, but its bootstrap interval [{interval[0]:.3f}, {interval[1]:.3f}] "
            f"contains 0, {no_count}"
        )
    full = f"full r = {curve.r_full:.3f}"
    if interval is not None:
        full += f", bootstrap interval [{interval[0]:.3f}, {interval[1]:.3f}]"
    n_steps = curve.r.size
    if curve.n_dims_for_share is None:
        return (
            f"{full}; no prefix of the {n_steps} DNN dimensions reaches {100 * curve.share:.0f}% of the "
            "full r² with a positive r"
        )
    if curve.n_dims_for_share == 1:
        added = f"the first of {n_steps} DNN dimensions in matched order alone reaches"
    else:
        added = f"the first {curve.n_dims_for_share} of {n_steps} DNN dimensions in matched order together reach"
    return f"{full}; {added} {100 * curve.share:.0f}% of the full r²"


# -- objects that show agreement and disagreement ----------------------------


def _check_order(order: Sequence[int], n_dnn: int) -> np.ndarray:
    """Return ``order`` as int64, or raise ValueError for a list that is no order of DNN dimensions.

    A plain int64 cast would truncate a fractional dimension to another one.
    """
    array = np.asarray(order)
    if array.ndim != 1:
        raise ValueError(f"order must be a 1-D list of DNN dimensions, got shape {array.shape}")
    if array.size == 0:
        raise ValueError("order is empty: name at least one DNN dimension")
    if array.dtype.kind == "f":
        whole = np.isfinite(array) & (array == np.rint(array))
        if not whole.all():
            position = int(np.flatnonzero(~whole)[0])
            raise ValueError(
                f"order must be integer DNN dimensions, got {float(array[position])} at position {position}"
            )
    elif array.dtype.kind not in "iu":
        raise ValueError(f"order must be integer DNN dimensions, got dtype {array.dtype}")
    array = array.astype(np.int64)
    outside = np.flatnonzero((array < 0) | (array >= n_dnn))
    if outside.size:
        position = int(outside[0])
        raise ValueError(
            f"order names DNN dimension {int(array[position])} at position {position}, but the DNN "
            f"embedding has {n_dnn} dimensions (0 to {n_dnn - 1})"
        )
    first_position: dict[int, int] = {}
    for position, dimension in enumerate(array.tolist()):
        if dimension in first_position:
            raise ValueError(
                f"order names DNN dimension {dimension} twice (positions {first_position[dimension]} "
                f"and {position}): add each dimension once"
            )
        first_position[dimension] = position
    return array

def _descending_ranks(weights: np.ndarray) -> np.ndarray:
    """Rank 1 = highest weight; ties (such as the many zeros of a sparse dimension) share the mean rank."""
    return rankdata(-np.asarray(weights, dtype=np.float64), method="average")


def top_objects_for_pair(human_weights: np.ndarray, dnn_weights: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """List the objects high on both dimensions of a pair, and high on one only.

    With descending ranks ``r_h`` and ``r_d`` (1 = highest weight):

    - ``"both"``: smallest ``max(r_h, r_d)``, so high in both;
    - ``"human_only"``: smallest ``r_h - r_d``, high for humans, low for the DNN;
    - ``"dnn_only"``: smallest ``r_d - r_h``.

    Ties break by the other rank, then by object index.

    Args:
        human_weights (np.ndarray): Shape ``(n_objects,)``.
        dnn_weights (np.ndarray): Shape ``(n_objects,)``.
        k (int): Objects per list.

    Returns:
        dict[str, np.ndarray]: Object indices for ``"both"``, ``"human_only"``
        and ``"dnn_only"``, each shape ``(k,)``.

    Raises:
        ValueError: If the two weight vectors differ in length, or ``k`` is
            not an integer in ``1 .. n_objects``.
    """
    human_rank = _descending_ranks(human_weights)
    dnn_rank = _descending_ranks(dnn_weights)
    if human_rank.shape != dnn_rank.shape:
        raise ValueError(
            f"both dimensions need one weight per object, got {human_rank.shape} and {dnn_rank.shape}"
        )
    check_integer("k", k)
    if not 1 <= k <= human_rank.size:
        raise ValueError(f"k={k} is invalid for {human_rank.size} objects: use 1..{human_rank.size}")
    index = np.arange(human_rank.size)
    both = np.lexsort((index, human_rank + dnn_rank, np.maximum(human_rank, dnn_rank)))
    human_only = np.lexsort((index, human_rank, human_rank - dnn_rank))
    dnn_only = np.lexsort((index, dnn_rank, dnn_rank - human_rank))
    return {"both": both[:k], "human_only": human_only[:k], "dnn_only": dnn_only[:k]}


def top_objects_table(
    human: np.ndarray,
    dnn: np.ndarray,
    matching: Matching,
    names: Sequence[str],
    k: int = 10,
) -> pd.DataFrame:
    """Return the top-``k`` objects of every matched pair as a long table.

    Columns: pair_rank, human_dim, dnn_dim, r, group (``both``, ``human_only``,
    ``dnn_only``), position (1..k), object_index, object_id, human_weight,
    dnn_weight.

    Args:
        human (np.ndarray): Human embedding, shape ``(n_objects, n_human)``.
        dnn (np.ndarray): DNN embedding of the same objects, shape ``(n_objects, n_dnn)``.
        matching (Matching): The pairs to list, in their order.
        names (Sequence[str]): The object id of each row.
        k (int): Objects per group and pair.

    Returns:
        pd.DataFrame: ``3 * k`` rows per pair.

    Raises:
        ValueError: If ``names`` does not have one entry per object, or ``k``
            is invalid (see :func:`top_objects_for_pair`).
    """
    if len(names) != human.shape[0]:
        raise ValueError(f"{len(names)} object names for {human.shape[0]} objects")
    rows = []
    for rank, (human_dim, dnn_dim, r) in enumerate(
        zip(matching.human_dims, matching.dnn_dims, matching.correlations), start=1
    ):
        lists = top_objects_for_pair(human[:, human_dim], dnn[:, dnn_dim], k)
        for group, objects in lists.items():
            for position, obj in enumerate(objects, start=1):
                rows.append(
                    {
                        "pair_rank": rank,
                        "human_dim": int(human_dim),
                        "dnn_dim": int(dnn_dim),
                        "r": float(r),
                        "group": group,
                        "position": position,
                        "object_index": int(obj),
                        "object_id": names[obj],
                        "human_weight": float(human[obj, human_dim]),
                        "dnn_weight": float(dnn[obj, dnn_dim]),
                    }
                )
    return pd.DataFrame(rows)


__all__ = [
    "MATCHING_METHODS",
    "CumulativeRSA",
    "Matching",
    "chance_matchings",
    "correlate_columns",
    "cumulative_rsa",
    "dims_for_share",
    "match_all",
    "match_dimensions",
    "matched_order",
    "top_objects_for_pair",
    "top_objects_table",
]
