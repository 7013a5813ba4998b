"""Odd-one-out choices of a simulated observer whose similarity comes from features.

A DNN (or any feature space) takes part in the triplet task like a human
participant: for the objects a, b, c it compares the three pairs (a, b),
(a, c) and (b, c), keeps the most similar pair, and the remaining object is
the odd one out.

Similarity of two feature rows x and y:

- ``dot``: ``x . y``. By default the features first pass through a ReLU
  (negative values set to 0). The similarity is then an inner product of
  non-negative vectors, like that of the non-negative embeddings (SPoSE,
  VICE) later fitted to the choices.
- ``cosine``: ``x . y / (|x| |y|)``.
- ``euclidean``: ``-|x - y|``, the negative distance.

Choice rules:

- ``argmax``: the pair with the largest similarity stays. Ties (two or three
  pairs with exactly the same float similarity) are broken uniformly at
  random by the seeded generator and counted.
- ``softmax``: a noisy observer picks pair p with probability
  ``exp(s_p / T) / sum_q exp(s_q / T)`` at temperature T.

Two ways to get the pair similarities, chosen by memory and cost:

- ``gram``: compute the upper triangle of the Gram matrix ``Y Y^T`` of the
  (transformed) features once, in row blocks with BLAS, then look up three
  entries per triplet. For 24,102 objects the float32 matrix takes
  24102^2 * 4 bytes = 2.3 GB, and with 4,096-d features it costs about
  2.4e12 multiply-adds. Euclidean distances from the Gram matrix lose
  digits to cancellation, so a triplet whose choice lies within that
  rounding error is recomputed from its feature rows as ``gather``
  computes it.
- ``gather``: copy the three feature rows of each triplet from the (possibly
  memory-mapped) matrix into reused buffers and take row-wise dot products
  with ``np.einsum``. Nothing grows with the number of objects, but each
  triplet reads three whole rows from memory.

``method="auto"`` takes the Gram matrix when it fits in ``max_gram_bytes`` and
the triplets touch at least 1/75 of all pairs, where the two cost about the
same. With 4,096-d float32 features on a 2-core x86_64 CPU (OpenBLAS, shared
with other jobs) the Gram matrix cost about 0.16 us per pair. The gather
method cost about 12 us per pair, or 35 us per triplet. Both costs
grow linearly with the number of features, so the ratio holds for other
widths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dimalign._checks import check_integer, check_random_state
from dimalign._progress import progress_disabled
from dimalign._warnings import warn
from dimalign.io.triplets import validate_triplets

logger = logging.getLogger(__name__)

# Real features tie rarely (none of 131,552 THINGS triplets from the VGG-16
# features), so ties in more than a tenth of the choices point to a problem.
_TIE_WARNING_SHARE = 0.1

SIMILARITIES = ("dot", "cosine", "euclidean")
RULES = ("argmax", "softmax")
METHODS = ("auto", "gram", "gather")

DEFAULT_MAX_GRAM_BYTES = 4 * 1024**3
# "auto" prefers the Gram matrix once the triplets touch this fraction of the
# n (n - 1) / 2 pairs (see the module docstring).
_GRAM_PAIR_FRACTION = 1 / 75

# Pair p of a triplet (a, b, c) is (a, b), (a, c) or (b, c), so the odd one
# out is c, b or a. Row p of this table reorders a triplet into the canonical
# layout, which is the pair in its input order followed by the odd one out.
_ORDER_BY_PAIR = np.array([[0, 1, 2], [0, 2, 1], [1, 2, 0]])

_MAX_LISTED = 10


@dataclass
class SimulationResult:
    """Simulated odd-one-out choices.

    Attributes:
        triplets (np.ndarray): int64 array ``(n_triplets, 3)`` in canonical
            layout: the most similar pair first (in input order), the odd one
            out last.
        n_ties (int): Triplets whose largest pair similarity was shared by two
            or three pairs. Under ``argmax`` these were broken at random; under
            ``softmax`` they are only counted.
        similarity (str): ``dot``, ``cosine`` or ``euclidean``.
        rule (str): ``argmax`` or ``softmax``.
        temperature (float | None): Softmax temperature (None for argmax).
        relu (bool): Whether features passed through a ReLU first.
        method (str): ``gram`` or ``gather`` (how similarities were computed).
    """

    triplets: np.ndarray
    n_ties: int
    similarity: str
    rule: str
    temperature: float | None
    relu: bool
    method: str

    @property
    def n_triplets(self) -> int:
        """Number of simulated choices."""
        return int(len(self.triplets))

    def settings(self) -> dict[str, Any]:
        """Return every field except the triplets, for a manifest."""
        return {
            "n_triplets": self.n_triplets,
            "n_ties": self.n_ties,
            "similarity": self.similarity,
            "rule": self.rule,
            "temperature": self.temperature,
            "relu": self.relu,
            "method": self.method,
        }


def simulate_choices(
    features: np.ndarray,
    triplets: np.ndarray,
    similarity: str = "dot",
    rule: str = "argmax",
    temperature: float = 1.0,
    random_state: int | np.random.Generator | None = 0,
    batch_size: int | None = None,
    *,
    relu: bool | None = None,
    method: str = "auto",
    max_gram_bytes: int = DEFAULT_MAX_GRAM_BYTES,
) -> SimulationResult:
    """Simulate an observer's odd-one-out choice for every triplet.

    Args:
        features (np.ndarray): Float array ``(n_objects, n_features)``; may be
            memory-mapped. Row i describes object i.
        triplets (np.ndarray): Integer array ``(n_triplets, 3)`` of object
            indices; the order within a row does not matter.
        similarity (str): ``"dot"``, ``"cosine"`` or ``"euclidean"``.
        rule (str): ``"argmax"`` or ``"softmax"``.
        temperature (float): Softmax temperature T > 0 in similarity units;
            ignored by ``argmax``.
        random_state (int | np.random.Generator | None): Seed of the tie
            breaks and softmax draws. Generator draws happen in triplet order,
            so the result does not depend on ``batch_size``.
        batch_size (int | None): Triplets per batch; None picks 1,000,000 for
            the Gram method and about 8 MB of gathered rows otherwise.
        relu (bool | None): Set negative features to 0 before comparing. None
            means True for ``dot`` and False for the other similarities.
        method (str): ``"auto"``, ``"gram"`` or ``"gather"`` (see the module
            docstring).
        max_gram_bytes (int): Largest Gram matrix ``"auto"`` may allocate.

    Returns:
        SimulationResult: The reordered triplets and the tie count.

    Raises:
        ValueError: If the features are not real numbers, a feature row
            contains NaN or inf, a cosine row has zero
            norm, the triplets are invalid for the number of feature rows, or
            an option is unknown or ``random_state`` is not a seed, a
            generator or None. The message names the rows. Rows are never
            dropped because that would renumber the objects.

    Example:
        >>> features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> simulate_choices(features, np.array([[2, 0, 1]])).triplets.tolist()
        [[0, 1, 2]]
    """
    _check_options(similarity, rule, temperature, method)
    if not isinstance(features, np.ndarray):
        features = np.asarray(features, dtype=np.float64)
    # A memory map stays as it is, so only the dtype is checked here. numpy would
    # drop an imaginary part with only a ComplexWarning.
    if features.dtype.kind not in "biuf":
        raise ValueError(f"features must be real numbers, got dtype {features.dtype}; pass a float array")
    if features.ndim != 2:
        raise ValueError(
            f"features must be 2-D (n_objects, n_features), got shape {features.shape}"
        )
    n_objects = int(features.shape[0])
    if relu is None:
        relu = similarity == "dot"
    triplets = validate_triplets(triplets, n_objects, source="triplets")
    norms, has_negative = _check_rows(features, relu, need_norms=similarity == "cosine")
    # A ReLU of non-negative features (the output of a ReLU layer, for
    # instance) changes nothing, so skip its copy of the feature matrix.
    apply_relu = relu and has_negative

    chosen_automatically = method == "auto"
    if chosen_automatically:
        method = _choose_method(n_objects, len(triplets), features, max_gram_bytes)
    if method == "gram":
        lookup = _GramLookup(features, similarity, apply_relu, norms)
        default_batch = 1_000_000
        if chosen_automatically and not lookup.finite_norms():
            # |x|^2 overflows although the distances within triplets may not.
            logger.info("squared feature norms overflow %s, so the gather method is used", lookup.dtype)
            method = "gather"
    if method == "gather":
        lookup = _GatherLookup(features, similarity, apply_relu, norms)
        # Four row buffers of 8 MB in all, small enough for a typical L3 cache.
        default_batch = max(16, (8 << 20) // (4 * features.shape[1] * lookup.dtype.itemsize))
    if batch_size is None:
        batch_size = default_batch
    # A batch size below 1 would make the loop below run no batch and return
    # the uninitialised array of choices.
    else:
        check_integer("batch_size", batch_size, 1)

    rng = check_random_state(random_state)
    chosen = np.empty_like(triplets)
    n_ties = 0
    starts = range(0, len(triplets), batch_size)
    for start in tqdm(starts, desc="simulating choices", unit="batch", disable=progress_disabled()):
        batch = triplets[start : start + batch_size]
        with np.errstate(over="ignore", invalid="ignore"):
            pair_similarities = lookup(batch)
        _check_finite_similarities(pair_similarities, batch, start, features, lookup.dtype)
        pairs, batch_ties = _choose_pairs(pair_similarities, rule, temperature, rng)
        n_ties += batch_ties
        order = _ORDER_BY_PAIR[pairs]
        chosen[start : start + len(batch)] = np.take_along_axis(batch, order, axis=1)

    logger.info(
        "simulated %d odd-one-out choices (%s similarity%s, %s%s, %s method); %d ties%s",
        len(triplets), similarity, " of ReLU features" if relu else "", rule,
        f" at T={temperature:g}" if rule == "softmax" else "", method, n_ties,
        " broken at random" if rule == "argmax" and n_ties else "",
    )
    if rule == "argmax" and n_ties > _TIE_WARNING_SHARE * len(triplets):
        # A Python warning, because a notebook shows no log records by default.
        warn(
            f"{n_ties} of {len(triplets)} choices ({100 * n_ties / len(triplets):.0f}%) were ties "
            "broken at random, so they say little about the features. Rows that are identical or "
            "all zero (after ReLU) tie, and so do values whose products underflow, such as "
            "float32 features near 1e-23: check the features, or rescale them",
            UserWarning,
        )
    return SimulationResult(
        triplets=chosen,
        n_ties=int(n_ties),
        similarity=similarity,
        rule=rule,
        temperature=float(temperature) if rule == "softmax" else None,
        relu=bool(relu),
        method=method,
    )


def _check_finite_similarities(
    similarities: np.ndarray, batch: np.ndarray, start: int, features: np.ndarray, dtype: np.dtype
) -> None:
    """Raise ``ValueError`` when a pair similarity overflowed, instead of choosing at random."""
    finite = np.isfinite(similarities).all(axis=1)
    if finite.all():
        return
    row = int(np.flatnonzero(~finite)[0])
    largest = float(np.nanmax(np.abs(np.asarray(features[batch[row]], dtype=np.float64))))
    # Similarities are float64 already for float64 features, so only narrower ones gain from it.
    wider = "" if np.dtype(dtype) == np.float64 else " or save them as float64"
    raise ValueError(
        f"the similarities of triplet {start + row} (objects {batch[row].tolist()}) are not finite: "
        f"features as large as {largest:.3g} overflow {np.dtype(dtype).name}; divide the features "
        f"by a constant (argmax choices do not change; with softmax, scale the temperature too){wider}"
    )


def _check_options(similarity: str, rule: str, temperature: float, method: str) -> None:
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {similarity!r}; use one of {', '.join(SIMILARITIES)}")
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if rule == "softmax" and not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"the softmax temperature must be a positive number, got {temperature}")


def gram_matrix_bytes(
    features: np.ndarray,
    n_triplets: int,
    method: str = "auto",
    max_gram_bytes: int = DEFAULT_MAX_GRAM_BYTES,
) -> int:
    """Return the size of the Gram matrix that :func:`simulate_choices` would allocate.

    Args:
        features (np.ndarray): Feature matrix, shape ``(n_objects, n_features)``.
        n_triplets (int): Number of triplets to simulate.
        method (str): ``"auto"``, ``"gram"`` or ``"gather"``, as in :func:`simulate_choices`.
        max_gram_bytes (int): As in :func:`simulate_choices`.

    Returns:
        int: Bytes of the ``n_objects x n_objects`` matrix, or 0 when the
        gather method is used. ``"auto"`` may still switch to gather when the
        squared norms overflow, so the result is an upper bound.
    """
    n_objects = int(features.shape[0])
    gram_bytes = n_objects * n_objects * _compute_dtype(features).itemsize
    chosen = method == "auto" and _gram_is_chosen(n_objects, n_triplets, gram_bytes, max_gram_bytes)
    if method == "gram" or chosen:
        return gram_bytes
    return 0


def _gram_is_chosen(n_objects: int, n_triplets: int, gram_bytes: int, max_gram_bytes: int) -> bool:
    n_pairs = n_objects * (n_objects - 1) // 2
    return gram_bytes <= max_gram_bytes and 3 * n_triplets >= _GRAM_PAIR_FRACTION * n_pairs


def _choose_method(
    n_objects: int, n_triplets: int, features: np.ndarray, max_gram_bytes: int
) -> str:
    itemsize = _compute_dtype(features).itemsize
    gram_bytes = n_objects * n_objects * itemsize
    n_pairs = n_objects * (n_objects - 1) // 2
    if _gram_is_chosen(n_objects, n_triplets, gram_bytes, max_gram_bytes):
        logger.info(
            "using a Gram matrix of %d x %d objects (%.2f GB)",
            n_objects, n_objects, gram_bytes / 1e9,
        )
        return "gram"
    reason = (
        f"a Gram matrix would take {gram_bytes / 1e9:.2f} GB, over max_gram_bytes"
        if gram_bytes > max_gram_bytes
        else f"{n_triplets} triplets touch too few of the {n_pairs} pairs"
    )
    logger.info("gathering feature rows per triplet because %s", reason)
    return "gather"


def _compute_dtype(features: np.ndarray) -> np.dtype:
    """float32 for float32 or narrower features, float64 for float64."""
    return np.result_type(features.dtype, np.float32)


# --------------------------------------------------------------------------- feature checks


def _check_rows(
    features: np.ndarray, relu: bool, need_norms: bool
) -> tuple[np.ndarray | None, bool]:
    """Reject rows with NaN or inf, and compute row norms when cosine needs them.

    Reads the matrix in blocks of about 64 MB, so a memory-mapped file is
    never loaded whole.

    Returns:
        tuple[np.ndarray | None, bool]: The row norms (None unless
        ``need_norms``) and whether any feature value is negative.
    """
    n_objects, n_features = features.shape
    block = max(1, (64 << 20) // max(1, n_features * features.dtype.itemsize))
    bad_rows: list[np.ndarray] = []
    has_negative = False
    norms = np.empty(n_objects, dtype=np.float64) if need_norms else None
    for start in range(0, n_objects, block):
        rows = np.asarray(features[start : start + block])
        bad_rows.append(start + np.flatnonzero(~np.isfinite(rows).all(axis=1)))
        has_negative = has_negative or bool((rows < 0).any())
        if norms is not None:
            rows = np.maximum(rows, 0) if relu else rows
            norms[start : start + len(rows)] = np.linalg.norm(rows.astype(np.float64), axis=1)

    bad = np.concatenate(bad_rows)
    if len(bad):
        listed = ", ".join(str(row) for row in bad[:_MAX_LISTED])
        more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise ValueError(
            f"feature rows {listed}{more} contain NaN or inf ({len(bad)} of {n_objects} rows); "
            "fix these objects' features upstream. Rows are never dropped because that "
            "would renumber the objects"
        )
    if norms is not None and (norms == 0).any():
        zero = np.flatnonzero(norms == 0)
        listed = ", ".join(str(row) for row in zero[:_MAX_LISTED])
        after = " after the ReLU" if relu else ""
        raise ValueError(
            f"feature rows {listed} have zero norm{after} ({len(zero)} rows), so their cosine "
            "similarity is undefined; use similarity='dot' or 'euclidean'"
        )
    return norms, has_negative


def _transform(
    rows: np.ndarray, relu: bool, inverse_norms: np.ndarray | None, dtype: np.dtype
) -> np.ndarray:
    rows = np.asarray(rows, dtype=dtype)
    if relu:
        rows = np.maximum(rows, 0)
    if inverse_norms is not None:
        rows = rows * inverse_norms[:, None].astype(dtype)
    return rows


# --------------------------------------------------------------------------- pair similarities


class _GramLookup:
    """Pair similarities read from the upper triangle of a precomputed Gram matrix."""

    def __init__(self, features: np.ndarray, similarity: str, relu: bool, norms: np.ndarray | None):
        self.similarity = similarity
        self.dtype = _compute_dtype(features)
        self.n_objects = int(features.shape[0])
        # Distances do not change when every row moves by the same vector, and
        # centring first avoids the cancellation in |x|^2 + |y|^2 - 2 x.y that
        # far-off features (all near 100, say) suffer in float32.
        self.gram = _upper_gram(features, relu, norms, self.dtype, center=similarity == "euclidean")
        self.flat = self.gram.reshape(-1)
        if similarity == "euclidean":
            self.squared_norms = np.diagonal(self.gram).astype(np.float64)
            # Centring does not help when the objects form clusters far apart:
            # within a cluster, |x|^2 + |y|^2 - 2 x.y still cancels. Each Gram
            # entry, norms included, is off by at most about n_features * eps
            # times the sum of its absolute products (the worst case of a sum of
            # n_features products), so a squared distance is off by at most
            # about 2 * n_features * eps * (|x|^2 + |y|^2). Triplets whose two
            # smallest squared distances are closer than twice that (both may
            # be off) are recomputed from the feature rows, as gather does.
            self.close_call_tolerance = 4 * (features.shape[1] + 2) * float(np.finfo(self.dtype).eps)
            self.exact = _GatherLookup(features, similarity, relu, norms)

    def finite_norms(self) -> bool:
        """Return whether the squared norms that euclidean lookups use are finite."""
        return self.similarity != "euclidean" or bool(np.isfinite(self.squared_norms).all())

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        similarities = np.empty((len(batch), 3), dtype=np.float64)
        for pair, (first, second) in enumerate(((0, 1), (0, 2), (1, 2))):
            low = np.minimum(batch[:, first], batch[:, second])
            high = np.maximum(batch[:, first], batch[:, second])
            products = self.flat.take(low * self.n_objects + high).astype(np.float64)
            if self.similarity == "euclidean":
                squared = self.squared_norms[low] + self.squared_norms[high] - 2.0 * products
                products = -np.sqrt(np.maximum(squared, 0.0))
            similarities[:, pair] = products
        if self.similarity == "euclidean":
            similarities = self._recompute_close_calls(batch, similarities)
        return similarities

    def _recompute_close_calls(self, batch: np.ndarray, similarities: np.ndarray) -> np.ndarray:
        """Replace the distances of triplets whose choice is within the Gram rounding error."""
        squared = np.sort(similarities**2, axis=1)
        norms = self.squared_norms[batch]
        scale = np.max(norms + np.roll(norms, 1, axis=1), axis=1)
        close = np.flatnonzero(squared[:, 1] - squared[:, 0] <= self.close_call_tolerance * scale)
        if close.size:
            similarities[close] = self.exact(batch[close])
        return similarities


def _upper_gram(
    features: np.ndarray, relu: bool, norms: np.ndarray | None, dtype: np.dtype, center: bool = False
) -> np.ndarray:
    """Compute ``Y Y^T`` for the transformed features, filling only the upper triangle.

    Entries below the diagonal are left uninitialised and never read: the
    lookup always indexes ``[min(i, j), max(i, j)]``. Skipping them halves the
    multiply-adds. With ``center`` the column means are subtracted first.
    """
    n_objects = features.shape[0]
    inverse_norms = None if norms is None else 1.0 / norms
    if relu or inverse_norms is not None or features.dtype != dtype:
        transformed = _transform(features, relu, inverse_norms, dtype)
    else:
        transformed = features
    if center:
        # A new array: the features may be the caller's own (or a read-only memory map).
        transformed = transformed - transformed.mean(axis=0, dtype=np.float64).astype(dtype)
    gram = np.empty((n_objects, n_objects), dtype=dtype)
    block = 1024
    for start in tqdm(range(0, n_objects, block), desc="Gram matrix", unit="block", disable=progress_disabled()):
        stop = min(start + block, n_objects)
        # Overflow shows as inf and is reported with the triplet that meets it.
        with np.errstate(over="ignore", invalid="ignore"):
            gram[start:stop, start:] = transformed[start:stop] @ transformed[start:].T
    return gram


class _GatherLookup:
    """Pair similarities from the gathered feature rows of each triplet.

    The rows go into buffers that are reused for every batch. Small batches
    keep the buffers in the CPU cache, and reuse avoids the page faults of
    fresh allocations, which otherwise cost more than the dot products.
    """

    def __init__(self, features: np.ndarray, similarity: str, relu: bool, norms: np.ndarray | None):
        self.features = features
        self.similarity = similarity
        self.relu = relu
        self.dtype = _compute_dtype(features)
        self.inverse_norms = None if norms is None else (1.0 / norms).astype(self.dtype)
        self.buffers = np.empty((4, 0, features.shape[1]), dtype=self.dtype)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.buffers.shape[1] < len(batch):
            self.buffers = np.empty((4, len(batch), self.features.shape[1]), dtype=self.dtype)
        rows = [self._gather(batch[:, position], self.buffers[position, : len(batch)])
                for position in range(3)]
        difference = self.buffers[3, : len(batch)]

        similarities = np.empty((len(batch), 3), dtype=np.float64)
        for pair, (first, second) in enumerate(((0, 1), (0, 2), (1, 2))):
            left, right = rows[first], rows[second]
            if self.similarity == "euclidean":
                np.subtract(left, right, out=difference)
                similarities[:, pair] = -np.sqrt(np.einsum("ij,ij->i", difference, difference))
            else:
                similarities[:, pair] = np.einsum("ij,ij->i", left, right)
        return similarities

    def _gather(self, objects: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.features.dtype == self.dtype:
            np.take(self.features, objects, axis=0, out=out)
        else:
            out[:] = np.take(self.features, objects, axis=0)
        if self.relu:
            np.maximum(out, 0, out=out)
        if self.inverse_norms is not None:
            out *= self.inverse_norms[objects, None]
        return out


# --------------------------------------------------------------------------- choice rules


def _choose_pairs(
    similarities: np.ndarray, rule: str, temperature: float, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Return the chosen pair (0, 1 or 2) of each triplet and the number of ties."""
    largest = similarities.max(axis=1, keepdims=True)
    is_largest = similarities == largest
    tied = np.flatnonzero(is_largest.sum(axis=1) > 1)

    if rule == "argmax":
        pairs = similarities.argmax(axis=1)
        if len(tied):
            # A uniform random number per tied pair; the largest one wins.
            scores = np.where(is_largest[tied], rng.random((len(tied), 3)), -1.0)
            pairs[tied] = scores.argmax(axis=1)
        return pairs, len(tied)

    # Subtracting the row maximum keeps exp() finite at small temperatures. At
    # tiny ones (1e-320) the division overflows to -inf, whose exp() is the right 0.
    with np.errstate(over="ignore"):
        weights = np.exp((similarities - largest) / temperature)
    cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    draws = rng.random(len(similarities))
    pairs = (draws[:, None] >= cumulative[:, :2]).sum(axis=1)
    return pairs, len(tied)
