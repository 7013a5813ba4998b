"""Which objects show a dimension: top-k lists and the percentile grid used for labelling.

The labelling layout shows one dimension as a grid of ``n_rows x n_cols``
objects: the first row holds the ``n_cols`` objects with the highest weights,
and each further row holds the ``n_cols`` objects whose weights lie closest to
a decreasing percentile of that dimension's weights. Participants then see
both what the dimension is strongest for and how it fades.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Percentiles of rows 2..5 in the default 5 x 6 grid (row 1 is the top objects).
DEFAULT_PERCENTILES = (98.0, 95.0, 90.0, 80.0)


def _check_weights(weights: np.ndarray) -> np.ndarray:
    """Return one dimension's weights as a 1-D float64 array of finite values.

    Raises:
        ValueError: If the array is not 1-D or contains NaN or inf, naming the
            objects. A NaN sorts after every number and turns the percentiles
            into NaN, so the grid would show arbitrary objects.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1:
        raise ValueError(f"weights must be 1-D (n_objects,), got shape {weights.shape}")
    bad = np.flatnonzero(~np.isfinite(weights))
    if bad.size:
        raise ValueError(
            f"objects {bad[:20].tolist()} have NaN or inf weights ({bad.size} of {weights.size}); "
            "the embedding must be finite, so refit or repair it before drawing grids"
        )
    return weights


def top_objects(weights: np.ndarray, k: int) -> np.ndarray:
    """Return the indices of the ``k`` largest weights, largest first.

    Equal weights keep their row order, so the lower index comes first.

    Args:
        weights (np.ndarray): One dimension's weights, shape ``(n_objects,)``.
        k (int): How many objects; at most ``n_objects``.

    Returns:
        np.ndarray: Object indices, shape ``(k,)``.

    Raises:
        ValueError: If ``k`` is out of range, or the weights are not a 1-D
            array of finite values.
    """
    weights = _check_weights(weights)
    if not 1 <= k <= weights.size:
        raise ValueError(f"k={k} is invalid for {weights.size} objects: use 1..{weights.size}")
    order = np.argsort(-weights, kind="stable")
    return order[:k]


def percentile_grid(
    weights: np.ndarray,
    n_cols: int = 6,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Choose the objects of the labelling grid for one dimension.

    Row 0 holds the ``n_cols`` highest-weighted objects. Row ``r > 0`` holds
    the ``n_cols`` not yet shown objects whose weights are closest to the
    ``percentiles[r - 1]``-th percentile of all weights. No object appears
    twice.

    Args:
        weights (np.ndarray): One dimension's weights, shape ``(n_objects,)``.
        n_cols (int): Objects per row (6 in the published layout).
        percentiles (Sequence[float]): Decreasing percentiles in (0, 100) for
            the rows after the first (4 rows give the 5 x 6 layout).

    Returns:
        np.ndarray: Object indices, shape ``(1 + len(percentiles), n_cols)``.

    Raises:
        ValueError: If there are fewer objects than grid cells, the
            percentiles are not decreasing values in (0, 100), or the weights
            are not a 1-D array of finite values.

    Examples:
        >>> percentile_grid(np.arange(100.0), n_cols=2, percentiles=(50.0,)).tolist()
        [[99, 98], [50, 49]]
    """
    weights = _check_weights(weights)
    percentiles = [float(value) for value in percentiles]
    n_cells = n_cols * (1 + len(percentiles))
    if weights.size < n_cells:
        raise ValueError(f"a grid of {n_cells} cells needs at least {n_cells} objects, got {weights.size}")
    if any(not 0.0 < value < 100.0 for value in percentiles) or any(
        later >= earlier for earlier, later in zip(percentiles, percentiles[1:])
    ):
        raise ValueError(f"percentiles must decrease strictly within (0, 100), got {percentiles}")

    rows = [top_objects(weights, n_cols)]
    used = np.zeros(weights.size, dtype=bool)
    used[rows[0]] = True
    for percentile in percentiles:
        target = np.percentile(weights, percentile)
        distance = np.abs(weights - target)
        distance[used] = np.inf
        # Stable order: among equal distances the lower index comes first.
        row = np.argsort(distance, kind="stable")[:n_cols]
        row = row[np.argsort(-weights[row], kind="stable")]
        used[row] = True
        rows.append(row)
    return np.stack(rows)
