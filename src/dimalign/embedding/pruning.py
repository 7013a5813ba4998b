"""Which dimensions of a fitted embedding to keep.

VICE keeps a dimension when enough objects have a weight that is credibly
positive: for each object and dimension, the posterior probability that the
weight is at most zero is ``P(w <= 0) = Phi(-mu / sigma)`` under the Gaussian
q(w) = N(mu, sigma^2). Those probabilities are treated as p-values, corrected
across objects with the Benjamini-Hochberg step-up procedure, and a dimension
is kept when more than ``min_objects`` objects stay significant.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats


def benjamini_hochberg(p_values: np.ndarray, alpha: float = 0.05, axis: int = 0) -> np.ndarray:
    """Return which hypotheses the Benjamini-Hochberg step-up procedure rejects.

    The procedure sorts the m p-values, finds the largest k with
    ``p_(k) <= k * alpha / m`` and rejects the k smallest. The code compares
    the adjusted p-values of ``scipy.stats.false_discovery_control``
    (``min over j >= k of m * p_(j) / j``) with alpha, which is the same test
    except for a p-value exactly on a threshold, where the rounding of
    ``m * p / k`` decides.

    Args:
        p_values (np.ndarray): P-values in [0, 1]; tests run along ``axis``.
        alpha (float): False discovery rate, in (0, 1).
        axis (int): Axis along which the hypotheses of one family lie.

    Returns:
        np.ndarray: Boolean array of the shape of ``p_values``, True where rejected.

    Examples:
        >>> benjamini_hochberg(np.array([0.01, 0.04, 0.045])).tolist()
        [True, True, True]
    """
    p_values = np.asarray(p_values, dtype=np.float64)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if p_values.size == 0:
        return np.zeros(p_values.shape, dtype=bool)
    if np.isnan(p_values).any() or (p_values < 0).any() or (p_values > 1).any():
        raise ValueError("p-values must lie in [0, 1] and contain no NaN")
    adjusted = stats.false_discovery_control(p_values, axis=axis, method="bh")
    return adjusted <= alpha


def probability_non_positive(loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Return P(w <= 0) under N(loc, scale^2) elementwise, computed with ``ndtr``.

    Args:
        loc (np.ndarray): Posterior means.
        scale (np.ndarray): Posterior standard deviations, same shape, positive.

    Returns:
        np.ndarray: float64 probabilities ``Phi(-loc / scale)``, same shape.
    """
    return special.ndtr(-np.asarray(loc, dtype=np.float64) / np.asarray(scale, dtype=np.float64))


def vice_kept_dimensions(
    loc: np.ndarray, scale: np.ndarray, alpha: float = 0.05, min_objects: int = 5
) -> np.ndarray:
    """Return the indices of the dimensions that VICE keeps.

    Args:
        loc (np.ndarray): Posterior means, shape ``(n_objects, n_dims)``.
        scale (np.ndarray): Posterior standard deviations, same shape.
        alpha (float): False discovery rate of the per-dimension BH correction.
        min_objects (int): A dimension is kept when MORE than this many objects
            have a significantly positive weight.

    Returns:
        np.ndarray: Kept dimension indices, increasing.
    """
    p_values = probability_non_positive(loc, scale)
    significant = benjamini_hochberg(p_values, alpha=alpha, axis=0)
    return np.flatnonzero(significant.sum(axis=0) > min_objects)


def spose_kept_dimensions(weights: np.ndarray, threshold: float = 0.1, min_objects: int = 5) -> np.ndarray:
    """Return the dimensions of a SPoSE embedding with more than ``min_objects`` weights above ``threshold``.

    Args:
        weights (np.ndarray): Non-negative weights, shape ``(n_objects, n_dims)``.
        threshold (float): A weight above this counts towards keeping its dimension.
        min_objects (int): A dimension is kept when more than this many
            objects have a weight above ``threshold``.

    Returns:
        np.ndarray: Kept dimension indices, increasing.
    """
    weights = np.asarray(weights)
    return np.flatnonzero((weights > threshold).sum(axis=0) > min_objects)
