"""Sparse non-negative embeddings fitted to odd-one-out triplets: VICE and SPoSE.

The estimators are imported on first use, so that ``dimalign --help`` does not
pay for importing torch and scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VICE": "dimalign.embedding.vice",
    "SPoSE": "dimalign.embedding.spose",
    "fit_run": "dimalign.embedding.runs",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dimalign.embedding' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    # Lists the lazy names too, so tab completion and dir() find them.
    return sorted(set(globals()) | set(_EXPORTS))
