"""Triplet choice probabilities, odd-one-out accuracy and model-predicted similarity.

SPoSE and VICE share one choice model. An object ``i`` has a non-negative
embedding vector ``y_i``, and the similarity of two objects is the dot product
``s_ij = y_i · y_j``. In a triplet ``(i, j, k)`` the pair judged most similar
is picked by a softmax over the three pairwise similarities, so the
probability that ``k`` is the odd one out is

    p(k | i, j) = exp(s_ij) / (exp(s_ij) + exp(s_ik) + exp(s_jk)).

Triplets follow the project format: 0-based object indices, the first two
columns are the most similar pair and the last column is the odd one out.

Every function here is computed in a numerically stable way, so embeddings
with large weights (dot products of several hundred) give finite results.
Example:

>>> import numpy as np
>>> embedding = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
>>> round(float(choice_probabilities(embedding, [[0, 1, 2]])[0]), 4)
0.5761
>>> odd_one_out_accuracy(embedding, [[0, 1, 2], [0, 2, 1]])
0.5
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from scipy.special import log_softmax
from tqdm.auto import tqdm

from dimalign._progress import progress_disabled
from dimalign.device import resolve_device

logger = logging.getLogger(__name__)

DEFAULT_TRIPLET_BATCH = 65_536
"""Triplets processed per batch by the triplet functions (bounds memory use)."""

DEFAULT_BLOCK_SIZE = {"cpu": 64, "cuda": 256}
"""Objects per block in :func:`similarity_matrix`. A block contains ``size**3`` values."""

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class AccuracyResult:
    """Odd-one-out accuracy with the number of tied triplets.

    Attributes:
        accuracy (float): Fraction of triplets whose recorded pair has the
            largest dot product. A triplet where ``m`` pairs share the maximum
            counts ``1/m`` of a hit when the recorded pair is among them.
        n_triplets (int): Number of triplets scored.
        n_ties (int): Triplets where two or three pairs share the maximum.
    """

    accuracy: float
    n_triplets: int
    n_ties: int

    def __float__(self) -> float:
        return self.accuracy


def _as_embedding(
    embedding: np.ndarray | Sequence[Sequence[float]], source: str = "the embedding"
) -> np.ndarray:
    """Return the embedding as a finite 2-D float64 array or raise ValueError.

    A fitted estimator or an :class:`~dimalign.io.runs.EmbeddingResult` gives
    its weights (:func:`~dimalign.io.runs.embedding_weights`). ``source``
    names the embedding in the errors, such as "the human embedding".
    """
    from dimalign.io.runs import embedding_weights, reject_negative_weights

    values = np.asarray(embedding_weights(embedding))
    # A cast to float drops imaginary parts with only a ComplexWarning, and parses text.
    if values.dtype.kind not in "biufO":
        raise ValueError(f"{source} must contain real numbers, got dtype {values.dtype}; pass a float array")
    array = values.astype(np.float64, copy=False)
    if array.ndim != 2:
        raise ValueError(f"{source} must be 2-D (n_objects, n_dims), got shape {array.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad_rows.size:
        raise ValueError(
            f"{source} rows {bad_rows[:20].tolist()} contain NaN or inf. "
            "Fix or remove those objects first."
        )
    reject_negative_weights(array, source)
    # Contiguous, because torch.as_tensor rejects numpy views with negative strides (emb[:, ::-1]).
    return np.ascontiguousarray(array)


def _as_triplets(triplets: np.ndarray | Sequence[Sequence[int]], n_objects: int) -> np.ndarray:
    """Return the triplets as an int64 ``(n, 3)`` array of valid, distinct indices.

    Raises:
        ValueError: If the shape is wrong, an index is outside ``0..n_objects-1``
            (naming the first such row and index), or a row repeats an object.
    """
    array = np.asarray(triplets)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"triplets must have shape (n, 3), got {array.shape}")
    if array.dtype.kind == "f":
        # Floats are accepted when whole, as np.loadtxt returns them.
        whole = np.isfinite(array) & (array == np.rint(array))
        if not whole.all():
            row, column = (int(index) for index in np.argwhere(~whole)[0])
            raise ValueError(
                f"triplet row {row}, column {column} has the value {float(array[row, column])}, but "
                f"object indices must be integers ({int((~whole).sum())} such values in all)"
            )
    elif array.size and array.dtype.kind not in "iu":
        raise ValueError(f"triplets must contain integer object indices, got dtype {array.dtype}")

    # Checked before the cast to int64, which would wrap indices of 2**63 and above.
    outside = (array < 0) | (array >= n_objects)
    if outside.any():
        row, column = np.argwhere(outside)[0]
        raise ValueError(
            f"triplet row {row} has object index {int(array[row, column])}, but the "
            f"embedding has {n_objects} objects (valid indices 0..{n_objects - 1}). "
            f"{int(outside.any(axis=1).sum())} rows are affected. Check that the "
            "triplets are 0-based and belong to this embedding."
        )
    array = array.astype(np.int64, copy=False)

    repeated = (
        (array[:, 0] == array[:, 1]) | (array[:, 0] == array[:, 2]) | (array[:, 1] == array[:, 2])
    )
    if repeated.any():
        rows = np.flatnonzero(repeated)
        raise ValueError(
            f"triplet rows {rows[:20].tolist()} name the same object twice, but "
            "a triplet needs three different objects"
        )
    return array


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def _batches(n_rows: int, batch_size: int) -> range:
    _check_batch_size(batch_size)
    return range(0, n_rows, batch_size)


def _as_object_indices(objects: Sequence[int] | np.ndarray, n_objects: int) -> np.ndarray:
    """Return ``objects`` as a 1-D int64 array of indices in ``0 .. n_objects - 1``.

    Floats are accepted when whole. Booleans are rejected rather than read as
    the indices 0 and 1, because a boolean mask is the likelier intent.

    Raises:
        ValueError: For an empty or not 1-D list, a value that is not a whole
            number, or an index out of range.
    """
    array = np.asarray(objects)
    if array.ndim != 1:
        raise ValueError(f"objects must be a 1-D sequence of object indices, got shape {array.shape}")
    if array.size == 0:
        raise ValueError("objects is empty: pass at least one object index, or None for the whole matrix")
    if array.dtype.kind == "f":
        whole = np.isfinite(array) & (array == np.rint(array))
        if not whole.all():
            position = int(np.flatnonzero(~whole)[0])
            raise ValueError(
                f"objects must be integer object indices, got the value {float(array[position])} "
                f"at position {position}"
            )
    elif array.dtype.kind not in "iu":
        raise ValueError(f"objects must be integer object indices, got dtype {array.dtype}")
    outside = array[(array < 0) | (array >= n_objects)]
    if outside.size:
        raise ValueError(f"object indices {outside[:20].tolist()} are outside 0..{n_objects - 1}")
    return array.astype(np.int64)


def triplet_logits(
    embedding: np.ndarray, triplets: np.ndarray | Sequence[Sequence[int]]
) -> np.ndarray:
    """Compute the three pairwise dot products of each triplet.

    Args:
        embedding (np.ndarray): Shape ``(n_objects, n_dims)``.
        triplets (array-like): Shape ``(n, 3)``, rows ``(i, j, k)``.

    Returns:
        np.ndarray: Shape ``(n, 3)``, float64, columns ``y_i·y_j``, ``y_i·y_k``
        and ``y_j·y_k``. Column 0 is the logit of the recorded choice.

    Raises:
        ValueError: If the embedding is not 2-D, has NaN or inf or a weight
            below -0.01, or a triplet is not of shape ``(n, 3)``, names an
            index outside ``0 .. n_objects - 1`` or repeats an object.
    """
    weights = _as_embedding(embedding)
    rows = _as_triplets(triplets, weights.shape[0])
    first, second, third = weights[rows[:, 0]], weights[rows[:, 1]], weights[rows[:, 2]]
    return np.stack(
        [
            np.einsum("nd,nd->n", first, second),
            np.einsum("nd,nd->n", first, third),
            np.einsum("nd,nd->n", second, third),
        ],
        axis=1,
    )


def choice_log_probabilities(
    embedding: np.ndarray,
    triplets: np.ndarray | Sequence[Sequence[int]],
    batch_size: int = DEFAULT_TRIPLET_BATCH,
) -> np.ndarray:
    """Compute the log-probability of each recorded choice under the softmax model.

    ``log p = (s_ij - m) - log(exp(s_ij - m) + exp(s_ik - m) + exp(s_jk - m))``
    with ``m`` the largest of the three logits (``scipy.special.log_softmax``).
    The shift keeps large dot products from overflowing. Subtracting ``m``
    before adding the logarithm keeps its digits when the logits are large.

    Args:
        embedding (np.ndarray): Shape ``(n_objects, n_dims)``.
        triplets (array-like): Shape ``(n, 3)``; the last column is the odd one out.
        batch_size (int): Triplets per batch.

    Returns:
        np.ndarray: Shape ``(n,)``, float64, each value ``<= 0``.

    Raises:
        ValueError: If the embedding is not 2-D, has NaN or inf or a weight
            below -0.01, a triplet is not of shape ``(n, 3)``, names an
            index outside ``0 .. n_objects - 1`` or repeats an object, or
            ``batch_size`` is not a positive integer.
    """
    weights = _as_embedding(embedding)
    rows = _as_triplets(triplets, weights.shape[0])
    result = np.empty(rows.shape[0], dtype=np.float64)
    for start in _batches(rows.shape[0], batch_size):
        logits = triplet_logits(weights, rows[start : start + batch_size])
        result[start : start + batch_size] = log_softmax(logits, axis=1)[:, 0]
    return result


def choice_probabilities(
    embedding: np.ndarray,
    triplets: np.ndarray | Sequence[Sequence[int]],
    batch_size: int = DEFAULT_TRIPLET_BATCH,
) -> np.ndarray:
    """Compute the probability of each recorded choice under the softmax model.

    Args:
        embedding (np.ndarray): Shape ``(n_objects, n_dims)``.
        triplets (array-like): Shape ``(n, 3)``; the last column is the odd one out.
        batch_size (int): Triplets per batch.

    Returns:
        np.ndarray: Shape ``(n,)``, float64 values in ``[0, 1]``.

    Raises:
        ValueError: If the embedding is not 2-D, has NaN or inf or a weight
            below -0.01, a triplet is not of shape ``(n, 3)``, names an
            index outside ``0 .. n_objects - 1`` or repeats an object, or
            ``batch_size`` is not a positive integer.
    """
    return np.exp(choice_log_probabilities(embedding, triplets, batch_size=batch_size))


def triplet_log_likelihood(
    embedding: np.ndarray,
    triplets: np.ndarray | Sequence[Sequence[int]],
    reduction: str = "mean",
    batch_size: int = DEFAULT_TRIPLET_BATCH,
) -> float:
    """Compute the log-likelihood of the recorded choices.

    Args:
        embedding (np.ndarray): Shape ``(n_objects, n_dims)``.
        triplets (array-like): Shape ``(n, 3)``.
        reduction (str): ``"mean"`` (per triplet) or ``"sum"``.
        batch_size (int): Triplets per batch.

    Returns:
        float: The mean or summed log-probability (``<= 0``).

    Raises:
        ValueError: If ``reduction`` is invalid, no triplets are given, or a
            triplet, the embedding or ``batch_size`` is invalid.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"invalid reduction {reduction!r}: use 'mean' or 'sum'")
    log_probabilities = choice_log_probabilities(embedding, triplets, batch_size=batch_size)
    if log_probabilities.size == 0:
        raise ValueError("no triplets given: the log-likelihood of an empty set is undefined")
    if reduction == "sum":
        return float(log_probabilities.sum())
    return float(log_probabilities.mean())


def triplet_nll(
    embedding: np.ndarray,
    triplets: np.ndarray | Sequence[Sequence[int]],
    batch_size: int = DEFAULT_TRIPLET_BATCH,
) -> float:
    """Compute the mean negative log-likelihood per triplet (chance: ``log 3 ≈ 1.0986``).

    Args:
        embedding (np.ndarray): Shape ``(n_objects, n_dims)``.
        triplets (array-like): Shape ``(n, 3)``; the last column is the odd one out.
        batch_size (int): Triplets per batch.

    Returns:
        float: The mean of ``-log p`` over the triplets (``>= 0``).

    Raises:
        ValueError: If no triplets are given, or a triplet or the embedding is invalid.
    """
    return -triplet_log_likelihood(embedding, triplets, reduction="mean", batch_size=batch_size)


def odd_one_out_accuracy(
    embedding: np.ndarray,
    triplets: np.ndarray | Sequence[Sequence[int]],
    return_ties: bool = False,
    batch_size: int = DEFAULT_TRIPLET_BATCH,
) -> float | AccuracyResult:
    """Score how often the largest dot product picks the recorded pair.

    Ties use exact equality of the float64 dot products. When ``m`` pairs
    share the maximum and the recorded pair is one of them, the triplet counts
    ``1/m`` of a hit (the expected accuracy of breaking the tie at random), so
    an all-zero embedding scores exactly 1/3.

    Args:
        embedding (np.ndarray): Shape ``(n_objects, n_dims)``.
        triplets (array-like): Shape ``(n, 3)``; the last column is the odd one out.
        return_ties (bool): Return an :class:`AccuracyResult` with the number
            of tied triplets instead of the bare accuracy.
        batch_size (int): Triplets per batch.

    Returns:
        float | AccuracyResult: The accuracy in ``[0, 1]``, or the full result.

    Raises:
        ValueError: If no triplets are given, an index is out of range, or
            the embedding has a weight below -0.01.
    """
    weights = _as_embedding(embedding)
    rows = _as_triplets(triplets, weights.shape[0])
    if rows.shape[0] == 0:
        raise ValueError("no triplets given: accuracy on an empty set is undefined")

    # hits_by_tie_size[m - 1] counts the hits among triplets with m maximal
    # pairs. Summing them as an exact fraction keeps an all-tied set at exactly 1/3.
    hits_by_tie_size = np.zeros(3, dtype=np.int64)
    n_ties = 0
    for start in _batches(rows.shape[0], batch_size):
        logits = triplet_logits(weights, rows[start : start + batch_size])
        is_max = logits == logits.max(axis=1, keepdims=True)
        n_max = is_max.sum(axis=1)
        hits_by_tie_size += np.bincount(n_max[is_max[:, 0]] - 1, minlength=3)
        n_ties += int((n_max > 1).sum())

    weighted_hits = 6 * hits_by_tie_size[0] + 3 * hits_by_tie_size[1] + 2 * hits_by_tie_size[2]
    accuracy = float(Fraction(int(weighted_hits), 6 * rows.shape[0]))
    result = AccuracyResult(accuracy=accuracy, n_triplets=int(rows.shape[0]), n_ties=n_ties)
    if n_ties:
        logger.info("%d of %d triplets have tied dot products", n_ties, rows.shape[0])
    return result if return_ties else result.accuracy


def dot_similarity(embedding: np.ndarray) -> np.ndarray:
    """Compute the plain dot-product similarity ``Y Yᵀ``.

    Args:
        embedding (np.ndarray): Shape ``(n_objects, n_dims)``, finite.

    Returns:
        np.ndarray: Shape ``(n_objects, n_objects)``, float64.

    Raises:
        ValueError: If the embedding is not 2-D, has NaN or inf or a weight
            below -0.01.
    """
    weights = _as_embedding(embedding)
    return weights @ weights.T


# Model-predicted similarity -------------------------------------------------
#
# S_ij = mean over k not in {i, j} of p(k | i, j). Every unordered triple
# {i, j, k} shares one softmax denominator, and its three probabilities are
# the contributions to S_ij, S_ik and S_jk. The matrix is therefore
# accumulated over triples i < j < k only (n³/6 of them), in cubic blocks of
# objects, instead of over all n³ ordered (i, j, k).


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"invalid dtype {dtype}: use 'float64' or 'float32'")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"invalid dtype {dtype!r}: use 'float64' or 'float32'")
    return _DTYPES[dtype]


def _largest_safe_range(dtype: torch.dtype) -> float:
    """Return the largest logit range for which ``exp(s - max s)`` stays a normal number.

    Below the smallest normal float the relative precision of ``exp`` drops,
    so blocks with a wider range use the per-triple shift instead. The margin
    of 8 (a factor of about 3,000) is a safety allowance for rounding.
    """
    return -float(np.log(torch.finfo(dtype).tiny)) - 8.0


def _upper_masks(block_size: int, device: torch.device) -> torch.Tensor:
    """Return ``mask[a, b] = a < b`` for index pairs inside one block."""
    return torch.ones(block_size, block_size, dtype=torch.bool, device=device).triu(1)


BlockRange = tuple[int, int]


def _block_starts(n_objects: int, block_size: int) -> list[BlockRange]:
    return [(start, min(start + block_size, n_objects)) for start in range(0, n_objects, block_size)]


def _block_extremes(logits: torch.Tensor, blocks: list[BlockRange]) -> tuple[np.ndarray, np.ndarray]:
    """Return the maximum and minimum off-diagonal logit of every pair of blocks."""
    n_blocks = len(blocks)
    maxima = np.empty((n_blocks, n_blocks))
    minima = np.empty((n_blocks, n_blocks))
    for a, (i0, i1) in enumerate(blocks):
        for b in range(a, n_blocks):
            j0, j1 = blocks[b]
            values = logits[i0:i1, j0:j1]
            if a == b:
                off_diagonal = ~torch.eye(i1 - i0, dtype=torch.bool, device=logits.device)
                values = values[off_diagonal]
            if values.numel() == 0:  # a one-object block on the diagonal
                maxima[a, b] = maxima[b, a] = -np.inf
                minima[a, b] = minima[b, a] = np.inf
            else:
                maxima[a, b] = maxima[b, a] = float(values.max())
                minima[a, b] = minima[b, a] = float(values.min())
    return maxima, minima


def _mask_repeated_objects(
    values: torch.Tensor, same_ij: bool, same_jk: bool, upper: torch.Tensor
) -> None:
    """Zero the entries of a ``(ti, tj, tk)`` block that are not a triple ``i < j < k``.

    Only blocks on the diagonal (the same objects along two axes) contain
    such entries.
    """
    ti, tj, tk = values.shape
    if same_ij:
        values.masked_fill_(~upper[:ti, :tj, None], 0.0)
    if same_jk:
        values.masked_fill_(~upper[None, :tj, :tk], 0.0)


def _add_block_exponentials(
    exponentials: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    totals: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    same_ij: bool,
    same_jk: bool,
    upper: torch.Tensor,
) -> None:
    """Add one block's probabilities from shifted exponentials ``E = exp(s - peak)``.

    A triple costs two adds and a reciprocal: ``p(k | i, j) = E_ij / (E_ij + E_ik + E_jk)``.
    The diagonals of ``E`` (an object paired with itself) must be zero.
    """
    e_ij, e_ik, e_jk = exponentials
    inverse_sum = e_ij[:, :, None] + e_ik[:, None, :]
    inverse_sum += e_jk[None, :, :]
    inverse_sum.reciprocal_()
    _mask_repeated_objects(inverse_sum, same_ij, same_jk, upper)

    totals[0].add_(e_ij * inverse_sum.sum(dim=2))
    totals[1].add_(e_ik * inverse_sum.sum(dim=1))
    totals[2].add_(e_jk * inverse_sum.sum(dim=0))


def _add_block_per_triple_shift(
    shifted: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    totals: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    same_ij: bool,
    same_jk: bool,
    upper: torch.Tensor,
) -> None:
    """Add one block's probabilities, shifting each triple by its own maximum logit.

    Three exponentials per triple instead of none, but exact for any range of
    dot products.
    """
    s_ij = shifted[0][:, :, None]
    s_ik = shifted[1][:, None, :]
    s_jk = shifted[2][None, :, :]

    peak = torch.maximum(torch.maximum(s_ij, s_ik), s_jk)
    e_ij = torch.exp(s_ij - peak)
    e_ik = torch.exp(s_ik - peak)
    e_jk = torch.exp(s_jk - peak)
    inverse_sum = (e_ij + e_ik + e_jk).reciprocal_()
    _mask_repeated_objects(inverse_sum, same_ij, same_jk, upper)

    totals[0].add_((e_ij * inverse_sum).sum(dim=2))
    totals[1].add_((e_ik * inverse_sum).sum(dim=1))
    totals[2].add_((e_jk * inverse_sum).sum(dim=0))


def _accumulate_triples(
    logits: torch.Tensor,
    dtype: torch.dtype,
    block_size: int,
    progress: tqdm,
    safe_range: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Sum the probabilities of all triples ``i < j < k`` into ``totals[i, j]`` and so on.

    The objects are cut into blocks of ``block_size``, and every block triple
    ``a <= b <= c`` is one step. The exponentials are shifted by the maximum
    off-diagonal logit, chosen as widely as ``safe_range`` (default
    :func:`_largest_safe_range`) allows:

    - once for the whole matrix, when all logits span at most ``safe_range``;
    - else once per step, when the step's logits do;
    - else per triple, with three exponentials per triple.

    On the CPU the steps are shared among ``torch.get_num_threads()`` Python
    worker threads, and torch's intra-op thread count is set to 1 for the
    duration of the call (then restored). Each block is small, so torch would
    otherwise open one parallel region per operation, and thousands of
    regions are slow when other processes compete for the cores. Each worker
    sums into its own matrix, so the result does not depend on thread timing.

    Returns:
        tuple[torch.Tensor, int]: The totals (strictly upper triangular,
        ``dtype``) and the number of steps that needed the per-triple shift.
    """
    n_objects = logits.shape[0]
    if safe_range is None:
        safe_range = _largest_safe_range(dtype)
    blocks = _block_starts(n_objects, block_size)
    maxima, minima = _block_extremes(logits, blocks)
    steps = [
        (a, b, c)
        for a in range(len(blocks))
        for b in range(a, len(blocks))
        for c in range(b, len(blocks))
    ]
    upper = _upper_masks(block_size, logits.device)

    shared_exponentials = None
    if maxima.max() - minima.min() <= safe_range:
        shared_exponentials = torch.exp(logits - float(maxima.max())).to(dtype)
        shared_exponentials.fill_diagonal_(0.0)

    def add_step(totals: torch.Tensor, a: int, b: int, c: int) -> bool:
        """Add one step and return whether it needed the per-triple shift."""
        (i0, i1), (j0, j1), (k0, k1) = blocks[a], blocks[b], blocks[c]
        targets = (totals[i0:i1, j0:j1], totals[i0:i1, k0:k1], totals[j0:j1, k0:k1])
        if shared_exponentials is not None:
            exponentials = (
                shared_exponentials[i0:i1, j0:j1],
                shared_exponentials[i0:i1, k0:k1],
                shared_exponentials[j0:j1, k0:k1],
            )
            _add_block_exponentials(exponentials, targets, a == b, b == c, upper)
            return False

        peak = max(maxima[a, b], maxima[a, c], maxima[b, c])
        low = min(minima[a, b], minima[a, c], minima[b, c])
        if not np.isfinite(peak):  # a block of one object, so no triple
            return False
        shifted = (
            (logits[i0:i1, j0:j1] - peak).to(dtype),
            (logits[i0:i1, k0:k1] - peak).to(dtype),
            (logits[j0:j1, k0:k1] - peak).to(dtype),
        )
        if peak - low > safe_range:
            _add_block_per_triple_shift(shifted, targets, a == b, b == c, upper)
            return True

        e_ij, e_ik, e_jk = (torch.exp(values) for values in shifted)
        # A diagonal logit s_ii may exceed the peak and overflow; it is never used.
        if a == b:
            e_ij.fill_diagonal_(0.0)
        if b == c:
            e_jk.fill_diagonal_(0.0)
        if a == c:
            e_ik.fill_diagonal_(0.0)
        _add_block_exponentials((e_ij, e_ik, e_jk), targets, a == b, b == c, upper)
        return False

    def accumulate(share: list[tuple[int, int, int]]) -> tuple[torch.Tensor, int]:
        totals = torch.zeros(n_objects, n_objects, dtype=dtype, device=logits.device)
        n_per_triple = 0
        for a, b, c in share:
            n_per_triple += add_step(totals, a, b, c)
            progress.update(1)
        return totals, n_per_triple

    # NOTE: the CUDA path (one worker, default blocks of 256) has not been run on a GPU.
    n_workers = 1
    if logits.device.type == "cpu":
        n_workers = max(1, min(torch.get_num_threads(), len(steps)))
    if n_workers == 1:
        return accumulate(steps)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            parts = list(pool.map(accumulate, [steps[w::n_workers] for w in range(n_workers)]))
    finally:
        torch.set_num_threads(previous_threads)

    totals, n_per_triple = parts[0]
    for part_totals, part_count in parts[1:]:
        totals += part_totals
        n_per_triple += part_count
    return totals, n_per_triple


def _similarity_of_subset(
    logits: torch.Tensor, objects: np.ndarray, dtype: torch.dtype, batch_size: int
) -> torch.Tensor:
    """Compute S for the pairs of ``objects``, averaging over every other object k.

    The work is small, so it runs in float64 whatever ``dtype`` is, and only
    the result is cast.
    """
    n_objects = logits.shape[0]
    index = torch.as_tensor(objects, device=logits.device)
    pair_logits = logits[index][:, index]  # (m, m)
    object_logits = logits[index]  # (m, n): s_ik for every k
    result = torch.empty(len(objects), len(objects), dtype=logits.dtype, device=logits.device)
    # A batch contains (rows, m, n) values: as many as one cubic block, and at
    # least 4 Mi values (32 MiB in float64), so that few large operations run.
    rows_per_batch = max(1, max(batch_size**3, 1 << 22) // (len(objects) * n_objects))
    for start in range(0, len(objects), rows_per_batch):
        stop = min(start + rows_per_batch, len(objects))
        s_ij = pair_logits[start:stop, :, None]
        s_ik = object_logits[start:stop, None, :]
        s_jk = object_logits[None, :, :]
        peak = torch.maximum(torch.maximum(s_ij, s_ik), s_jk)
        numerator = torch.exp(s_ij - peak)
        probability = numerator / (numerator + torch.exp(s_ik - peak) + torch.exp(s_jk - peak))
        # Leave out k = i and k = j.
        rows = torch.arange(stop - start, device=logits.device)
        probability[rows, :, index[start:stop]] = 0.0
        columns = torch.arange(len(objects), device=logits.device)
        probability[:, columns, index] = 0.0
        result[start:stop] = probability.sum(dim=2) / (n_objects - 2)
    return result.to(dtype)


def similarity_matrix(
    embedding: np.ndarray,
    objects: Sequence[int] | np.ndarray | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float64",
) -> np.ndarray:
    """Compute the model-predicted similarity of every pair of objects.

    ``S_ij`` is the probability that ``i`` and ``j`` are judged the most
    similar pair, averaged over every third object ``k`` not in ``{i, j}``:

        S_ij = 1/(n-2) · Σ_k exp(s_ij) / (exp(s_ij) + exp(s_ik) + exp(s_jk)),

    with ``s = Y Yᵀ``. The exponentials are shifted by the maximum logit
    (once for the matrix, once per block of objects, or per triple, as widely
    as the range of dot products allows), so dot products of several hundred
    stay finite. The diagonal is undefined by the formula and set to 1 by
    convention. The result is symmetric.

    On the CPU the work is shared among ``torch.get_num_threads()`` worker
    threads, and torch's intra-op thread count is 1 until the call returns.

    Args:
        embedding (np.ndarray): Shape ``(n_objects, n_dims)``, at least 3 objects.
        objects (Sequence[int] | np.ndarray | None): Return only the
            sub-matrix of these objects (a non-empty 1-D list of indices, not
            a boolean mask), in this order. The mean still runs over all ``n_objects``
            third objects, so the result equals the rows and columns of the
            full matrix. Much faster for a few objects. From ``n_objects / 12``
            objects on, the full matrix is computed and cut instead.
        batch_size (int | None): Objects per block. A block contains
            ``batch_size**3`` values, so memory grows with its cube. Defaults
            to 64 on CPU and 256 on CUDA. A sub-matrix is computed in batches
            of at least 4 Mi values.
        device (str | torch.device): ``"cpu"``, ``"cuda"`` or ``"auto"``.
        dtype (str | torch.dtype): ``"float64"`` (default) or ``"float32"``
            (faster, relative error around 1e-6). The dot products are always
            computed in float64.

    Returns:
        np.ndarray: Shape ``(n_objects, n_objects)`` or ``(m, m)`` for ``m``
        requested objects, in the requested dtype.

    Raises:
        ValueError: With fewer than 3 objects, a weight below -0.01, an empty
            or invalid list of object indices, or an invalid dtype or batch size.

    Example:
        >>> import numpy as np
        >>> similarity = similarity_matrix(np.array([[1.0], [1.0], [0.0]]))
        >>> round(float(similarity[0, 1]), 4)
        0.5761
    """
    weights = _as_embedding(embedding)
    n_objects = weights.shape[0]
    if n_objects < 3:
        raise ValueError(
            f"the similarity matrix needs at least 3 objects (a third object k for "
            f"each pair), got {n_objects}"
        )
    torch_dtype = _resolve_dtype(dtype)
    torch_device = resolve_device(device)
    if batch_size is None:
        batch_size = DEFAULT_BLOCK_SIZE.get(torch_device.type, DEFAULT_BLOCK_SIZE["cpu"])
    _check_batch_size(batch_size)
    subset = _as_object_indices(objects, n_objects) if objects is not None else None

    weights_tensor = torch.as_tensor(weights, dtype=torch.float64, device=torch_device)
    logits = weights_tensor @ weights_tensor.T

    if subset is not None:
        # The subset costs O(m² n) and the full matrix O(n³) with a smaller
        # constant. With one torch thread on a shared 2-core x86_64 CPU and a
        # 1,854 x 42 gamma embedding, the full matrix took 1.3 s and subsets of
        # 150, 200 and 300 objects 0.76, 1.43 and 2.03 s. The subset is slower
        # from about n/10 objects on, and the switch at n/12 leaves a margin.
        if 144 * subset.size**2 > n_objects**2:
            full = similarity_matrix(weights, batch_size=batch_size, device=device, dtype=dtype)
            return full[np.ix_(subset, subset)]
        result = _similarity_of_subset(logits, subset, torch_dtype, batch_size)
        diagonal = torch.as_tensor(subset[:, None] == subset[None, :], device=torch_device)
        result[diagonal] = 1.0
        return result.cpu().numpy()

    n_blocks = len(_block_starts(n_objects, batch_size))
    n_steps = n_blocks * (n_blocks + 1) * (n_blocks + 2) // 6
    # leave=False: cumulative_rsa builds one matrix per step, and every finished
    # bar would otherwise stay in the notebook or terminal.
    progress = tqdm(
        total=n_steps, desc="similarity matrix", unit="block", disable=progress_disabled(), leave=False
    )
    with progress:
        totals, n_per_triple = _accumulate_triples(logits, torch_dtype, batch_size, progress)

    # Only entries i < j were accumulated. Mirror them and divide by the n - 2 third objects.
    similarity = (totals + totals.T) / (n_objects - 2)
    similarity.fill_diagonal_(1.0)
    logger.debug(
        "similarity matrix of %d objects: %d of %d blocks needed the per-triple shift",
        n_objects,
        n_per_triple,
        n_steps,
    )
    return similarity.cpu().numpy()
