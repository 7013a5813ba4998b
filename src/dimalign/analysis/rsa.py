"""Representational similarity analysis: correlate two similarity matrices.

Two representations are compared through their similarity (or dissimilarity)
matrices over the same objects. Only the upper triangle without the diagonal
enters the correlation, because the matrices are symmetric and the diagonal
is fixed by convention (1 for similarity, 0 for dissimilarity).

Missing or degenerate input is reported rather than passed on as NaN:

- NaN at different positions in the two inputs raises ``ValueError`` naming them.
- NaN at the same positions raises unless ``nan_policy="omit"``, which drops
  those pairs and warns.
- A constant input raises :class:`ConstantInputError` (a ``ValueError``),
  because its correlation is undefined. Values that differ only by rounding
  (see :data:`CONSTANT_TOLERANCE`) count as constant.

Example:

>>> correlate_vectors([1, 2, 3, 4, 100], [1, 2, 3, 4, 5], method="spearman")
1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from dimalign._warnings import warn

METHODS = ("pearson", "spearman")
NAN_POLICIES = ("raise", "omit")

#: An input counts as constant when ``ptp(x) <= CONSTANT_TOLERANCE * eps * max|x|``,
#: with ``eps`` the machine epsilon of its float type (of float64 for integers).
#: Matrices computed as averages of many equal terms, such as the predicted
#: similarity of an all-zero embedding, differ from a constant in the last bits,
#: and a correlation of those bits is noise.
CONSTANT_TOLERANCE = 1024


class ConstantInputError(ValueError):
    """Raised when an input to a correlation is constant (within rounding), so r is undefined.

    Attributes:
        input_index (int | None): 0 for the first input, 1 for the second.
    """

    def __init__(self, message: str, input_index: int | None = None) -> None:
        super().__init__(message)
        self.input_index = input_index


def upper_triangle(matrix: np.ndarray | Sequence[Sequence[float]], k: int = 1) -> np.ndarray:
    """Return the entries above the ``k``-th diagonal of a square matrix, row by row.

    Args:
        matrix (array-like): Shape ``(n, n)``.
        k (int): Diagonal offset; 1 leaves out the main diagonal.

    Returns:
        np.ndarray: Shape ``(n*(n-1)/2,)`` for ``k=1``, float64.

    Raises:
        ValueError: If the matrix is not square.
    """
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {array.shape}")
    rows, columns = np.triu_indices(array.shape[0], k=k)
    return array[rows, columns]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"invalid correlation method {method!r}: use one of {METHODS}")


def _handle_missing(
    a: np.ndarray, b: np.ndarray, nan_policy: str, describe_positions
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the NaN rules of this module and return the pairs to correlate."""
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"invalid nan_policy {nan_policy!r}: use one of {NAN_POLICIES}")
    for name, values in (("first", a), ("second", b)):
        if np.isinf(values).any():
            positions = np.flatnonzero(np.isinf(values))
            raise ValueError(
                f"the {name} input contains inf at {describe_positions(positions)}, but "
                "a correlation needs finite values"
            )

    missing_a = np.isnan(a)
    missing_b = np.isnan(b)
    if not missing_a.any() and not missing_b.any():
        return a, b

    only_a = np.flatnonzero(missing_a & ~missing_b)
    only_b = np.flatnonzero(missing_b & ~missing_a)
    if only_a.size or only_b.size:
        mismatches = []
        if only_a.size:
            mismatches.append(f"only the first input has NaN at {describe_positions(only_a)}")
        if only_b.size:
            mismatches.append(f"only the second input has NaN at {describe_positions(only_b)}")
        raise ValueError(
            f"NaN at different positions in the two inputs: {' and '.join(mismatches)}. "
            "Fill or remove the missing values in both inputs consistently."
        )

    both = np.flatnonzero(missing_a)
    if nan_policy == "raise":
        raise ValueError(
            f"both inputs contain NaN at {describe_positions(both)} ({both.size} values). "
            "Pass nan_policy='omit' to drop those pairs."
        )
    warn(
        f"dropped {both.size} of {a.size} value pairs that are NaN in both inputs",
        RuntimeWarning,
    )
    return a[~missing_a], b[~missing_b]


def _centre_and_scale(values: np.ndarray) -> np.ndarray:
    """Subtract the mean, then divide by the largest absolute deviation.

    r does not change with a shift or a positive scale. Centring first keeps
    the deviations of values with a large offset (1e10 + x) at the precision
    of the data, while dividing by the maximum first rounds each value once
    more, by about eps times the offset. The final scale keeps the squared deviations of tiny (1e-300)
    or huge (1e300) inputs from underflowing to 0 or overflowing to inf.
    The input is non-constant here, so no maximum is 0.
    """
    scale = np.max(np.abs(values))
    mean = np.mean(values / scale) * scale
    with np.errstate(over="ignore", invalid="ignore"):
        centred = values - mean
    if not np.isfinite(centred).all():
        # Values near the float maximum with both signs: centre in scaled units.
        centred = values / scale - mean / scale
    return centred / np.max(np.abs(centred))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Return ``r = sum(a_c * b_c) / sqrt(sum(a_c^2) * sum(b_c^2))`` of the centred values ``a_c``, ``b_c``.

    Hand-written instead of ``scipy.stats.pearsonr``, which returns NaN for
    values near the float maximum with both signs (scipy 1.17 overflows in
    ``x - mean``), while :func:`_centre_and_scale` handles them.
    """
    centered_a = _centre_and_scale(a)
    centered_b = _centre_and_scale(b)
    value = float(centered_a @ centered_b / np.sqrt((centered_a @ centered_a) * (centered_b @ centered_b)))
    return float(np.clip(value, -1.0, 1.0))


def _epsilon(*arrays: np.ndarray | Sequence) -> tuple[float, ...]:
    """Return the machine epsilon of each input's float type (float64 for other types)."""
    result = []
    for array in arrays:
        dtype = np.asarray(array).dtype
        result.append(float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else float(np.finfo(np.float64).eps))
    return tuple(result)


def _correlate_checked(
    a: np.ndarray, b: np.ndarray, method: str, epsilons: tuple[float, float]
) -> float:
    if a.size < 2:
        raise ValueError(
            f"a correlation needs at least 2 value pairs, got {a.size}. "
            "Use matrices of at least 3 objects."
        )
    for index, (name, values, eps) in enumerate((("first", a, epsilons[0]), ("second", b, epsilons[1]))):
        # Values near the float maximum with both signs have an infinite spread, which is not constant.
        with np.errstate(over="ignore"):
            spread = float(np.ptp(values))
        if spread <= CONSTANT_TOLERANCE * eps * float(np.max(np.abs(values))):
            raise ConstantInputError(
                f"the {name} input is constant (every value is {values[0]:.6g}, the spread "
                f"{spread:.3g} is within rounding), so its correlation is undefined",
                input_index=index,
            )
    if method == "spearman":
        # Average ranks for ties, as in scipy.stats.spearmanr.
        a, b = rankdata(a), rankdata(b)
    return _pearson(a, b)


def correlate_vectors(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    method: str = "pearson",
    nan_policy: str = "raise",
) -> float:
    """Correlate two vectors by Pearson or Spearman (average ranks for ties).

    Args:
        a (array-like): Shape ``(n,)``.
        b (array-like): Shape ``(n,)``.
        method (str): ``"pearson"`` or ``"spearman"``.
        nan_policy (str): ``"raise"`` (default) or ``"omit"`` (drop pairs that
            are NaN in both inputs, with a warning).

    Returns:
        float: The correlation coefficient in ``[-1, 1]``.

    Raises:
        ValueError: If the shapes differ, an input is constant, has inf, or has
            NaN that the policy does not allow.
    """
    _check_method(method)
    first = np.asarray(a, dtype=np.float64)
    second = np.asarray(b, dtype=np.float64)
    if first.ndim != 1 or second.ndim != 1 or first.shape != second.shape:
        raise ValueError(
            f"expected two 1-D vectors of equal length, got shapes {first.shape} and {second.shape}"
        )

    def describe_positions(positions: np.ndarray) -> str:
        return f"indices {positions[:20].tolist()}"

    epsilons = _epsilon(a, b)
    first, second = _handle_missing(first, second, nan_policy, describe_positions)
    return _correlate_checked(first, second, method, epsilons)


def rsa(
    a: np.ndarray | Sequence[Sequence[float]],
    b: np.ndarray | Sequence[Sequence[float]],
    method: str = "pearson",
    nan_policy: str = "raise",
) -> float:
    """Correlate the upper triangles (without diagonal) of two square matrices.

    Pass two similarity matrices, or two dissimilarity matrices. To compare a
    similarity matrix with a dissimilarity matrix, convert one first (for
    example ``1 - rdm``), because otherwise the sign flips.

    Args:
        a (array-like): Shape ``(n, n)``.
        b (array-like): Shape ``(n, n)``, the same objects in the same order.
        method (str): ``"pearson"`` or ``"spearman"``.
        nan_policy (str): ``"raise"`` (default) or ``"omit"``.

    Returns:
        float: The correlation coefficient in ``[-1, 1]``.

    Raises:
        ValueError: If the matrices are not square or differ in shape, or if
            the values are constant or contain NaN that the policy does not allow.
    """
    _check_method(method)
    first = np.asarray(a, dtype=np.float64)
    second = np.asarray(b, dtype=np.float64)
    for name, matrix in (("first", first), ("second", second)):
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"the {name} matrix must be square, got shape {matrix.shape}")
    if first.shape != second.shape:
        raise ValueError(
            f"the matrices differ in shape: {first.shape} and {second.shape}. "
            "Both must describe the same objects in the same order."
        )

    rows, columns = np.triu_indices(first.shape[0], k=1)

    def describe_positions(positions: np.ndarray) -> str:
        pairs = [(int(rows[p]), int(columns[p])) for p in positions[:20]]
        return f"(row, column) {pairs}"

    epsilons = _epsilon(a, b)
    first, second = _handle_missing(
        first[rows, columns], second[rows, columns], nan_policy, describe_positions
    )
    return _correlate_checked(first, second, method, epsilons)
