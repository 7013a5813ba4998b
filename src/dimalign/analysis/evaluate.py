"""Evaluate an embedding on held-out triplets: accuracy, likelihood, human checks.

:func:`evaluate_embedding` collects every metric that applies to the input:

- odd-one-out accuracy (ties split the credit) and the number of tied triplets;
- mean negative log-likelihood per triplet under the softmax choice model;
- for an embedding of all THINGS concepts and a THINGS data directory, the
  correlation of its predicted similarities with the fully sampled 48-object
  human RDM (see :mod:`dimalign.analysis.things48`);
- the noise ceiling, when some object sets were judged more than once.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from dimalign._warnings import warn
from dimalign.analysis.noise_ceiling import triplet_noise_ceiling
from dimalign.analysis.similarity import _as_embedding, odd_one_out_accuracy, triplet_nll
from dimalign.analysis.things48 import INDEX_NOT_THINGS_IDS, load_things48, things48_correlation
from dimalign.io.objects import index_object_ids
from dimalign.io.runs import EmbeddingResult, as_embedding_result

logger = logging.getLogger(__name__)

# Above this share of tied triplets, evaluate_embedding warns that the accuracy
# is mostly the credit of tie-breaking, which a fit pruned to a few dimensions gives.
MAX_TIED_SHARE = 0.5


def evaluate_embedding(
    embedding: np.ndarray | EmbeddingResult | Any,
    triplets: np.ndarray | Sequence[Sequence[int]],
    things_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    object_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Compute the evaluation metrics of an embedding on a set of triplets.

    Args:
        embedding (np.ndarray | EmbeddingResult | estimator): Shape
            ``(n_objects, n_dims)``, or a fitted VICE or SPoSE, whose
            ``embedding_`` is scored (not the posterior predictive of
            ``VICE.score``).
        triplets (array-like): Shape ``(n, 3)``, 0-based, odd one out last.
        things_dir (path | None): THINGS data directory with
            ``RDM48_triplet.mat``, ``words48.csv`` and ``unique_id.txt``. The
            48-object check runs when it is given and the embedding has one
            row per THINGS concept.
        device (str): Torch device for the 48-object similarities.
        object_ids (Sequence[str] | None): The object id of each embedding
            row (from its object table). The 48 objects are then found by id,
            in any row order. None takes the index of a DataFrame embedding
            (unless it is the default ``0 .. n - 1``), else the rows follow
            ``unique_id.txt``.

    Returns:
        dict[str, Any]: ``n_objects``, ``n_dims``, ``n_triplets``, ``accuracy``,
        ``n_ties``, ``nll``. Also ``things48_r`` (Pearson r) and
        ``things48_objects`` when the 48-object check ran, and
        ``noise_ceiling``, ``noise_ceiling_sets`` and ``noise_ceiling_responses``
        when repeated sets exist.

    Raises:
        FileNotFoundError: If ``things_dir`` or one of its three files does not exist.
        ValueError: If a triplet names an object the embedding does not have,
            or ``object_ids`` do not have one id per row.

    Warns:
        UserWarning: When the 48-object check is skipped because the rows are
            not the THINGS concepts, and when the noise ceiling rests on few
            responses (see :func:`triplet_noise_ceiling`).
    """
    from_index = object_ids is None and index_object_ids(embedding) is not None
    if from_index:
        object_ids = index_object_ids(embedding)
    if isinstance(embedding, EmbeddingResult):
        embedding = embedding.embedding
    elif hasattr(embedding, "get_params"):
        # A VICE or SPoSE estimator: its posterior means (or weights), as the run's embedding.npz stores them.
        embedding = as_embedding_result(embedding).embedding
    weights = _as_embedding(embedding)
    triplets = np.asarray(triplets)
    # Read before the triplets are scored, which takes a while on a large
    # file, so that a wrong THINGS directory fails at once.
    data = load_things48(things_dir) if things_dir is not None else None

    accuracy = odd_one_out_accuracy(weights, triplets, return_ties=True)
    # Dot products beyond the float64 range make numpy warn without context.
    # The warning below names the cause and its effect on the metrics.
    with np.errstate(over="ignore", invalid="ignore"):
        nll = triplet_nll(weights, triplets)
    metrics: dict[str, Any] = {
        "n_objects": int(weights.shape[0]),
        "n_dims": int(weights.shape[1]),
        "n_triplets": accuracy.n_triplets,
        "accuracy": accuracy.accuracy,
        "n_ties": accuracy.n_ties,
        "nll": nll,
    }
    if accuracy.n_ties > MAX_TIED_SHARE * accuracy.n_triplets:
        warn(
            f"{accuracy.n_ties} of {accuracy.n_triplets} triplets "
            f"({accuracy.n_ties / accuracy.n_triplets:.0%}) have tied dot products, and each of them "
            "counts 1/m of a hit for its m tied pairs, as a random guess would, so the accuracy says "
            "little about the embedding. Such ties come from objects with equal rows, such as the "
            "all-zero rows of a fit that pruned nearly every dimension: fit for more epochs, or check "
            "the embedding",
            UserWarning,
        )
    if not np.isfinite(nll):
        warn(
            f"dot products of the embedding overflow float64 (largest weight {weights.max():.3g}), so "
            "the NLL is not finite and the accuracy treats infinite dot products as equal, which "
            "can turn triplets into ties: check that the file contains an embedding of similarity weights",
            UserWarning,
        )

    if object_ids is not None and len(object_ids) != weights.shape[0]:
        raise ValueError(
            f"{len(object_ids)} object ids were given for an embedding of {weights.shape[0]} rows"
        )
    if data is not None:
        if weights.shape[0] != data.n_concepts:
            reason = f"the embedding has {weights.shape[0]} objects, not the {data.n_concepts} THINGS concepts"
        elif object_ids is not None and data.rows_in(object_ids) is None and from_index:
            reason = INDEX_NOT_THINGS_IDS
        elif object_ids is not None and data.rows_in(object_ids) is None:
            reason = "the object table of the embedding does not list the THINGS concept ids of unique_id.txt"
        else:
            reason = None
        if reason is None:
            from dimalign.analysis.rsa import ConstantInputError

            try:
                metrics["things48_r"] = things48_correlation(
                    weights, data=data, device=device, object_ids=object_ids
                )
                metrics["things48_objects"] = len(data.words)
            except ConstantInputError:
                # The accuracy and NLL stay meaningful (1/3 and log 3 for equal rows).
                reason = ("the embedding's similarities of the 48 objects are all equal within rounding, "
                          "so their correlation is undefined")
        if reason is not None:
            warn(f"skipped the 48-object check: {reason}", UserWarning)

    # Most triplet files repeat no object set, so a missing ceiling (a RuntimeWarning) is
    # logged, not warned. A ceiling from too few responses is warned again, at the caller's line.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ceiling = triplet_noise_ceiling(triplets)
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            warn(warning.message, warning.category)
    if ceiling is None:
        logger.info("no object set was judged twice, so there is no noise ceiling")
    else:
        metrics["noise_ceiling"] = ceiling.value
        metrics["noise_ceiling_sets"] = ceiling.n_sets
        metrics["noise_ceiling_responses"] = ceiling.n_responses
    return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """Format the metrics of :func:`evaluate_embedding` as one log line."""
    parts = [
        f"accuracy {metrics['accuracy']:.4f} on {metrics['n_triplets']} triplets "
        f"({metrics['n_ties']} ties)",
        f"NLL {metrics['nll']:.4f}",
    ]
    if "things48_r" in metrics:
        parts.append(f"48-object r {metrics['things48_r']:.4f}")
    if "noise_ceiling" in metrics:
        parts.append(
            f"noise ceiling {metrics['noise_ceiling']:.4f} "
            f"({metrics['noise_ceiling_responses']} responses in "
            f"{metrics['noise_ceiling_sets']} repeated sets)"
        )
    return ", ".join(parts)
