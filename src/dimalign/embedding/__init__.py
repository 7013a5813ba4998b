"""Sparse non-negative embeddings fitted to odd-one-out triplets: VICE and SPoSE.

The estimators are imported on first use, so that ``dimalign --help`` does not
pay for importing torch and scikit-learn.
"""

from __future__ import annotations

from dimalign._lazy import lazy_exports

_EXPORTS = {
    "VICE": "vice",
    "SPoSE": "spose",
    "fit_run": "runs",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
