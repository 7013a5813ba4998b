"""Evaluation and comparison of embeddings: accuracy, similarity, RSA, matching, relevance, ridge maps.

>>> import numpy as np
>>> from dimalign.analysis import odd_one_out_accuracy
>>> float(odd_one_out_accuracy(np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), [[0, 1, 2]]))
1.0

The functions that take an embedding array ``(n_objects, n_dims)`` also
take a fitted ``VICE`` or ``SPoSE`` (its ``embedding_``, for VICE the
posterior means) or an :class:`~dimalign.io.runs.EmbeddingResult`. They read
no files: load one with :func:`dimalign.io.runs.load_embedding`.

The names below are imported on first use from their modules, so that
``import dimalign.analysis`` (done by every ``dimalign`` command) stays cheap.
Functions named like their module (``compare``, ``rsa``, ``reproducibility``,
``sweep``) are imported from that module, e.g.
``from dimalign.analysis.rsa import rsa``: at package level the name would be
the module once it has been imported.
"""

from __future__ import annotations

from dimalign._lazy import lazy_exports

_EXPORTS = {
    "evaluate_embedding": "evaluate",
    "odd_one_out_accuracy": "similarity",
    "triplet_nll": "similarity",
    "choice_probabilities": "similarity",
    "similarity_matrix": "similarity",
    "triplet_noise_ceiling": "noise_ceiling",
    "things48_correlation": "things48",
    "load_things48": "things48",
    "bootstrap_rsa": "compare",
    "match_dimensions": "matching",
    "cumulative_rsa": "matching",
    "jackknife_relevance": "relevance",
    "compare_decisions": "relevance",
    "select_run": "selection",
    "RidgeMap": "ridge",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
