"""Jackknife relevance: how much each dimension contributes to a triplet choice.

For a triplet ``(i, j, k)`` whose last column ``k`` is the chosen odd one out,
the embedding (posterior means, no sampling) predicts

    p = exp(s_ij) / (exp(s_ij) + exp(s_ik) + exp(s_jk)),   s_ab = sum_m y_am y_bm.

Removing dimension ``m`` subtracts its product from each dot product,
``s_ab^(-m) = s_ab - y_am y_bm``, so all ``d`` removals of a triplet cost
``O(d)`` once the per-dimension products are known. The relevance of ``m``
is the drop ``p - p^(-m)``: positive when the dimension supports the choice.
A dimension that is zero for all three objects has a drop of exactly 0, and
removing the only dimension of a 1-d embedding gives ``p = 1/3`` exactly.

The most relevant dimension of a triplet is ranked by the drop in
log-probability, ``log p - log p^(-m)``, which has the same argmax as
``p - p^(-m)`` because ``log`` is increasing. A choice the model is sure of
(dot products differing by more than about 38) has ``p == 1.0`` in float64
for every removal, so all probability drops are 0, and beyond about 745 even
``log p`` rounds to 0. The ranking does not round: with ``t_a`` and ``t_b``
the two other logits minus the chosen one, ``-log p = log1p(exp(t_a) +
exp(t_b))`` is increasing in ``exp(t_a) + exp(t_b)``, so the removals are
ranked by that sum scaled by a shared ``exp(-c)``, with ``c`` the largest of
those logits over all removals of the triplet. A triplet whose largest
log-drop is shared by several dimensions (say two dimensions equal for its
three objects) has no single most relevant dimension. It is marked ``-1``
and counted, never credited to the lowest index.

:func:`compare_decisions` applies this to a human and a DNN embedding of the
same objects. It finds the triplets where both models choose the same odd one
out for different reasons, because their most relevant dimensions are not a
matched pair. It also finds the triplets where the models disagree most.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dimalign._checks import check_integer
from dimalign._progress import progress_disabled
from dimalign._warnings import warn
from dimalign.device import resolve_device

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 65_536

#: ``most_relevant`` of a triplet whose largest log-drop is shared by several dimensions.
NO_DIMENSION = -1


def _check_inputs(
    embedding: np.ndarray, triplets: np.ndarray, source: str = "the embedding"
) -> tuple[np.ndarray, np.ndarray]:
    """Return the embedding as float64 and the triplets as int64, or raise ValueError.

    The triplets are checked by :func:`dimalign.io.triplets.validate_triplets`
    (shape, whole-number indices in range, three distinct objects per row),
    which accepts floats such as those of ``np.loadtxt`` when every value is whole.
    """
    from dimalign.analysis.similarity import _as_embedding
    from dimalign.io.triplets import validate_triplets

    weights = _as_embedding(embedding, source)
    if weights.shape[1] == 0:
        raise ValueError(
            f"{source} has no dimension (shape {weights.shape}), so no dimension can be relevant"
        )
    return weights, validate_triplets(np.asarray(triplets), weights.shape[0])


def _pair_products(weights: torch.Tensor, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-dimension products of the three pairs (ij, ik, jk), each ``(batch, d)``."""
    first, second, third = weights[batch[:, 0]], weights[batch[:, 1]], weights[batch[:, 2]]
    return first * second, first * third, second * third


def option_probabilities(
    embedding: np.ndarray,
    triplets: np.ndarray,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
) -> np.ndarray:
    """Probability that each object of a triplet is the odd one out.

    Args:
        embedding (np.ndarray): Shape ``(n_objects, n_dims)``.
        triplets (np.ndarray): Shape ``(n, 3)``.
        batch_size (int): Triplets per batch.
        device (str): ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Returns:
        np.ndarray: Shape ``(n, 3)``; column ``c`` is the probability that
        ``triplets[:, c]`` is the odd one out. Rows sum to 1.

    Raises:
        ValueError: If the embedding is not 2-D, has no dimension or has NaN
            or inf, a triplet is invalid, or ``batch_size`` is below 1.
    """
    weights_np, rows = _check_inputs(embedding, triplets)
    # Checked because a negative step makes the loop below run no batch at all.
    check_integer("batch_size", batch_size, 1)
    torch_device = resolve_device(device)
    weights = torch.as_tensor(weights_np, device=torch_device)
    result = np.empty((rows.shape[0], 3))
    for start in range(0, rows.shape[0], batch_size):
        batch = torch.as_tensor(rows[start : start + batch_size], device=torch_device)
        ij, ik, jk = (products.sum(dim=1) for products in _pair_products(weights, batch))
        # Odd one out k <-> pair ij, j <-> ik, i <-> jk.
        logits = torch.stack([jk, ik, ij], dim=1)
        result[start : start + batch.shape[0]] = torch.softmax(logits, dim=1).cpu().numpy()
    return result


@dataclass
class JackknifeResult:
    """Relevance of every dimension for a set of triplet choices.

    Attributes:
        probabilities (np.ndarray): Probability of the chosen odd one out
            (last column) from the full embedding, shape ``(n,)``.
        most_relevant (np.ndarray): Dimension with the largest drop in
            log-probability per triplet, shape ``(n,)``; :data:`NO_DIMENSION`
            (-1) where several dimensions share that largest drop.
        max_drop (np.ndarray): The probability drop ``p - p^(-m)`` of that
            dimension (the largest drop), shape ``(n,)``. 0 for a saturated
            choice; for a tied triplet, the largest probability drop.
        mean_drop (np.ndarray): Mean drop of each dimension over the
            triplets, shape ``(n_dims,)``.
        share_most_relevant (np.ndarray): Share of all triplets where each
            dimension is the most relevant, shape ``(n_dims,)``. It sums to
            ``1 - n_tied / n``, because tied triplets count for no dimension.
        drops (np.ndarray | None): All drops ``p - p^(-m)``, shape
            ``(n, n_dims)``, when requested with ``keep_drops=True``.
    """

    probabilities: np.ndarray
    most_relevant: np.ndarray
    max_drop: np.ndarray
    mean_drop: np.ndarray
    share_most_relevant: np.ndarray
    drops: np.ndarray | None = None

    @property
    def n_tied(self) -> int:
        """Number of triplets without a single most relevant dimension."""
        return int(np.count_nonzero(self.most_relevant == NO_DIMENSION))

    def by_dimension(self) -> pd.DataFrame:
        """Return the relevance table: dim, mean_drop, share_most_relevant (by decreasing mean drop)."""
        table = pd.DataFrame(
            {
                "dim": np.arange(self.mean_drop.size),
                "mean_drop": self.mean_drop,
                "share_most_relevant": self.share_most_relevant,
            }
        )
        return table.sort_values(["mean_drop", "dim"], ascending=[False, True], ignore_index=True)


def jackknife_relevance(
    embedding: np.ndarray,
    triplets: np.ndarray,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    keep_drops: bool = False,
    name: str | None = None,
) -> JackknifeResult:
    """Compute the drop in the chosen odd one out's probability when each dimension is removed.

    Args:
        embedding (np.ndarray): Posterior means, shape ``(n_objects, n_dims)``.
        triplets (np.ndarray): Shape ``(n, 3)``, 0-based, the chosen odd one out last.
        batch_size (int): Triplets per batch; memory grows as ``batch_size * n_dims``.
        device (str): ``"cpu"``, ``"cuda"`` or ``"auto"``.
        keep_drops (bool): Also return the full ``(n, n_dims)`` drop matrix.
        name (str | None): Model named at the start of the warning and log line,
            such as ``"DNN embedding"``, so that they can be distinguished when
            several embeddings are explained in one run.

    Returns:
        JackknifeResult: Per-triplet and per-dimension relevance.

    Raises:
        ValueError: If the embedding is not 2-D, has no dimension, has
            NaN or inf or a weight below -0.01, the triplets are empty, not of shape ``(n, 3)``, name an index outside
            the embedding or repeat an object, or ``batch_size`` or
            ``device`` is invalid.

    Examples:
        >>> embedding = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> result = jackknife_relevance(embedding, np.array([[0, 1, 2]]))
        >>> result.most_relevant.tolist(), float(result.mean_drop[1])
        ([0], 0.0)
    """
    weights_np, rows = _check_inputs(embedding, triplets)
    if rows.shape[0] == 0:
        raise ValueError("no triplets given: relevance of an empty set is undefined")
    check_integer("batch_size", batch_size, 1)
    torch_device = resolve_device(device)
    weights = torch.as_tensor(weights_np, device=torch_device)
    n_triplets, n_dims = rows.shape[0], weights_np.shape[1]

    probabilities = np.empty(n_triplets)
    most_relevant = np.empty(n_triplets, dtype=np.int64)
    max_drop = np.empty(n_triplets)
    drop_sum = torch.zeros(n_dims, dtype=torch.float64, device=torch_device)
    drops = np.empty((n_triplets, n_dims)) if keep_drops else None
    starts = range(0, n_triplets, batch_size)
    for start in tqdm(starts, desc="jackknife", unit="batch", disable=progress_disabled(), leave=False):
        batch = torch.as_tensor(rows[start : start + batch_size], device=torch_device)
        stop = start + batch.shape[0]
        ij, ik, jk = _pair_products(weights, batch)  # (b, d) each

        # Full logits (b, 3) and the logits without each dimension (b, d, 3). One
        # softmax over both keeps a removal that changes no logit at a drop of exactly 0.
        full = torch.stack([ij.sum(dim=1), ik.sum(dim=1), jk.sum(dim=1)], dim=1)
        removed = full[:, None, :] - torch.stack([ij, ik, jk], dim=2)
        logits = torch.cat([full[:, None, :], removed], dim=1)
        chosen = torch.softmax(logits, dim=2)[:, :, 0]
        full_probability = chosen[:, 0]
        batch_drops = full_probability[:, None] - chosen[:, 1:]

        # Rank the removals by the drop in log p (see the module docstring).
        best_dim, tied = _most_relevant(logits[:, 1:, :])
        best_dim = torch.where(tied, torch.full_like(best_dim, NO_DIMENSION), best_dim)
        best_drop = torch.where(
            tied, batch_drops.max(dim=1).values, batch_drops.gather(1, best_dim.clamp(min=0)[:, None])[:, 0]
        )
        probabilities[start:stop] = full_probability.cpu().numpy()
        most_relevant[start:stop] = best_dim.cpu().numpy()
        max_drop[start:stop] = best_drop.cpu().numpy()
        drop_sum += batch_drops.sum(dim=0)
        if drops is not None:
            drops[start:stop] = batch_drops.cpu().numpy()

    assigned = most_relevant[most_relevant != NO_DIMENSION]
    share = np.bincount(assigned, minlength=n_dims) / n_triplets
    n_tied = n_triplets - assigned.size
    prefix = f"{name}: " if name else ""
    if n_tied:
        warn(
            f"{prefix}{n_tied} of {n_triplets} triplets have no single most relevant dimension, because "
            "several dimensions lower the log-probability of the choice by the same largest amount "
            f"(such as dimensions equal for the three objects); they are marked {NO_DIMENSION} and "
            "count for no dimension",
            UserWarning,
        )
    if assigned.size:
        most_frequent = f"dim {int(np.argmax(share))} ({100 * share.max():.1f}%)"
    else:
        most_frequent = "none (every triplet is tied)"
    logger.info(
        "%sjackknife over %d triplets and %d dimensions: mean p(choice) %.3f; most often relevant: %s",
        prefix, n_triplets, n_dims, probabilities.mean(), most_frequent,
    )
    return JackknifeResult(
        probabilities=probabilities,
        most_relevant=most_relevant,
        max_drop=max_drop,
        mean_drop=(drop_sum / n_triplets).cpu().numpy(),
        share_most_relevant=share,
        drops=drops,
    )


def _most_relevant(removed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Find the removal that lowers the log-probability of the chosen pair most.

    Args:
        removed (torch.Tensor): Logits without each dimension, shape
            ``(b, d, 3)``, the chosen pair first.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: The dimension with the largest
        log-drop, shape ``(b,)``, and whether another dimension has the same
        drop, shape ``(b,)``.
    """
    others = removed[..., 1:] - removed[..., :1]
    largest = others.amax(dim=(1, 2), keepdim=True)
    # Each sum is exp(-c) * (1 / p^(-m) - 1), so the largest marks the lowest
    # log p^(-m). It is at least 1, so it cannot underflow.
    scaled_sum = torch.exp(others - largest).sum(dim=2)
    best_sum, best_dim = scaled_sum.max(dim=1)
    tied = (scaled_sum == best_sum[:, None]).sum(dim=1) > 1
    return best_dim, tied


# -- human versus DNN ---------------------------------------------------------


@dataclass
class DecisionComparison:
    """Human and DNN decisions on the same triplets.

    Attributes:
        triplets (np.ndarray): The triplets, shape ``(n, 3)``.
        human_choice (np.ndarray): Column (0, 1, 2) of the odd one out the
            human embedding predicts (argmax of its three probabilities).
        dnn_choice (np.ndarray): Likewise for the DNN embedding.
        human_probabilities (np.ndarray): Shape ``(n, 3)``.
        dnn_probabilities (np.ndarray): Shape ``(n, 3)``.
        human (JackknifeResult): Relevance for the human model's own choices.
        dnn (JackknifeResult): Relevance for the DNN model's own choices.
    """

    triplets: np.ndarray
    human_choice: np.ndarray
    dnn_choice: np.ndarray
    human_probabilities: np.ndarray
    dnn_probabilities: np.ndarray
    human: JackknifeResult
    dnn: JackknifeResult

    @property
    def agree(self) -> np.ndarray:
        """Whether both models choose the same odd one out, shape ``(n,)``.

        A tie goes to the earliest column, as in ``human_choice``, so use
        :attr:`choice_agreement` for the share of agreeing choices.
        """
        return self.human_choice == self.dnn_choice

    @property
    def choice_agreement(self) -> float:
        """Share of triplets where both models choose the same odd one out, ties split.

        When ``m_h`` options share the human model's largest probability and
        ``m_d`` the DNN model's, a triplet counts ``c / (m_h m_d)``, where
        ``c`` is the number of options maximal for both. That is the expected
        agreement when each model breaks its ties at random, as the
        odd-one-out accuracy counts ties, so the share does not depend on the
        column order of the triplets.
        """
        human_best = _maximal_options(self.human_probabilities)
        dnn_best = _maximal_options(self.dnn_probabilities)
        shared = (human_best & dnn_best).sum(axis=1)
        return float(np.mean(shared / (human_best.sum(axis=1) * dnn_best.sum(axis=1))))

    @property
    def n_tied_choices(self) -> dict[str, int]:
        """Number of triplets whose largest probability two or three options share, per model."""
        return {
            "human": int(np.sum(_maximal_options(self.human_probabilities).sum(axis=1) > 1)),
            "dnn": int(np.sum(_maximal_options(self.dnn_probabilities).sum(axis=1) > 1)),
        }


def _maximal_options(probabilities: np.ndarray) -> np.ndarray:
    """Mark the options whose probability equals the largest of their triplet, shape ``(n, 3)``."""
    return probabilities == probabilities.max(axis=1, keepdims=True)


def _with_choice_last(triplets: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """Reorder each triplet so that column ``choice`` comes last (the other two keep their order)."""
    orders = np.array([[1, 2, 0], [0, 2, 1], [0, 1, 2]])[choice]
    return np.take_along_axis(triplets, orders, axis=1)


def compare_decisions(
    human: np.ndarray,
    dnn: np.ndarray,
    triplets: np.ndarray,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
) -> DecisionComparison:
    """Predict both models' choices on the same triplets and explain each with the jackknife.

    Each model's choice is the argmax of its three odd-one-out probabilities
    (ties go to the earliest column). The relevance of each model is computed
    for its own choice.

    Args:
        human (np.ndarray): Human embedding, shape ``(n_objects, n_human)``.
        dnn (np.ndarray): DNN embedding of the same objects, shape ``(n_objects, n_dnn)``.
        triplets (np.ndarray): Shape ``(n, 3)``. The column order matters only for
            tied choices, which go to the earliest column.
        batch_size (int): Triplets per batch.
        device (str): ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Returns:
        DecisionComparison: Choices, probabilities and relevance of both models.

    Raises:
        ValueError: If the embeddings differ in their number of objects, are
            DataFrames whose indexes list their objects differently, or have
            a weight below -0.01, or a triplet has a value that is not a
            whole number, an index out of range or a repeated object (naming
            its row).
    """
    from dimalign.io.objects import check_same_index
    from dimalign.io.runs import embedding_weights

    check_same_index(human, dnn, "human", "dnn")
    human = embedding_weights(human, "the human embedding")
    dnn = embedding_weights(dnn, "the DNN embedding")
    if np.asarray(human).shape[0] != np.asarray(dnn).shape[0]:
        raise ValueError(
            f"the human embedding has {np.asarray(human).shape[0]} objects and the DNN embedding "
            f"{np.asarray(dnn).shape[0]}: align them by object first"
        )
    # A plain int64 cast would truncate a fractional index to another object.
    triplets = _check_inputs(human, triplets, "the human embedding")[1]
    _check_inputs(dnn, triplets, "the DNN embedding")
    human_probabilities = option_probabilities(human, triplets, batch_size=batch_size, device=device)
    dnn_probabilities = option_probabilities(dnn, triplets, batch_size=batch_size, device=device)
    human_choice = np.argmax(human_probabilities, axis=1)
    dnn_choice = np.argmax(dnn_probabilities, axis=1)
    human_result = jackknife_relevance(
        human, _with_choice_last(triplets, human_choice), batch_size=batch_size, device=device,
        name="human embedding",
    )
    dnn_result = jackknife_relevance(
        dnn, _with_choice_last(triplets, dnn_choice), batch_size=batch_size, device=device,
        name="DNN embedding",
    )
    comparison = DecisionComparison(
        triplets=triplets,
        human_choice=human_choice,
        dnn_choice=dnn_choice,
        human_probabilities=human_probabilities,
        dnn_probabilities=dnn_probabilities,
        human=human_result,
        dnn=dnn_result,
    )
    tied = comparison.n_tied_choices
    logger.info(
        "human and DNN models choose the same odd one out in %.1f%% of %d triplets, with ties split. "
        "The human model ties on %d triplets, the DNN model on %d",
        100 * comparison.choice_agreement, triplets.shape[0], tied["human"], tied["dnn"],
    )
    return comparison


def _decision_frame(comparison: DecisionComparison, rows: np.ndarray, names: Sequence[str] | None) -> pd.DataFrame:
    """Return one row per triplet in ``rows`` with both models' choices and most relevant dimensions.

    Columns: triplet, object_1, object_2, object_3, human_odd_one_out,
    dnn_odd_one_out, p_human and p_dnn (each model's probability of its own
    choice), p_dnn_of_human_choice, human_dim, human_drop, dnn_dim and
    dnn_drop. With ``names``, each object column is followed by its
    ``<column>_id`` column.
    """
    triplets = comparison.triplets[rows]
    index = np.arange(rows.size)
    human_choice = comparison.human_choice[rows]
    dnn_choice = comparison.dnn_choice[rows]
    frame = pd.DataFrame(
        {
            "triplet": rows,
            "object_1": triplets[:, 0],
            "object_2": triplets[:, 1],
            "object_3": triplets[:, 2],
            "human_odd_one_out": triplets[index, human_choice],
            "dnn_odd_one_out": triplets[index, dnn_choice],
            "p_human": comparison.human_probabilities[rows, human_choice],
            "p_dnn": comparison.dnn_probabilities[rows, dnn_choice],
            "p_dnn_of_human_choice": comparison.dnn_probabilities[rows, human_choice],
            "human_dim": comparison.human.most_relevant[rows],
            "human_drop": comparison.human.max_drop[rows],
            "dnn_dim": comparison.dnn.most_relevant[rows],
            "dnn_drop": comparison.dnn.max_drop[rows],
        }
    )
    if names is not None:
        for column in ("object_1", "object_2", "object_3", "human_odd_one_out", "dnn_odd_one_out"):
            frame.insert(frame.columns.get_loc(column) + 1, f"{column}_id", [names[obj] for obj in frame[column]])
    return frame


def agree_on_different_dimensions(comparison: DecisionComparison, human_to_dnn: np.ndarray) -> np.ndarray:
    """Return, per triplet, whether both models choose alike but on dimensions that are not a matched pair.

    A triplet without a single most relevant dimension on either side
    (:data:`NO_DIMENSION`) is never counted.

    NOTE: It uses :attr:`DecisionComparison.agree`, where a tied choice goes
    to the first tied column, so for tied choices the result depends on the
    column order of the triplets, unlike ``choice_agreement``.

    Args:
        comparison (DecisionComparison): From :func:`compare_decisions`.
        human_to_dnn (np.ndarray): Matched DNN dimension of each human dimension.

    Returns:
        np.ndarray: Boolean, shape ``(n,)``.
    """
    human_dim, dnn_dim = comparison.human.most_relevant, comparison.dnn.most_relevant
    assigned = (human_dim != NO_DIMENSION) & (dnn_dim != NO_DIMENSION)
    matched = np.where(assigned, human_to_dnn[np.maximum(human_dim, 0)], NO_DIMENSION)
    return comparison.agree & assigned & (matched != dnn_dim)


def agreement_on_different_dimensions(
    comparison: DecisionComparison,
    human_to_dnn: Sequence[int] | np.ndarray,
    *,
    names: Sequence[str] | None = None,
    top: int = 100,
) -> pd.DataFrame:
    """List triplets where both models agree but their most relevant dimensions are not a matched pair.

    Args:
        comparison (DecisionComparison): From :func:`compare_decisions`.
        human_to_dnn (Sequence[int]): Matched DNN dimension of each human
            dimension (for example from matching with replacement).
        names (Sequence[str] | None): Object names for extra columns.
        top (int): Rows to return, by decreasing ``min(p_human, p_dnn)``
            (the agreements both models are surest of), at least 1.

    Returns:
        pd.DataFrame: One row per triplet (see :func:`_decision_frame` columns).

    Raises:
        ValueError: If ``human_to_dnn`` has not one entry per human dimension,
            or ``top`` is not a positive integer.
    """
    human_to_dnn = np.asarray(human_to_dnn, dtype=np.int64)
    if human_to_dnn.size != comparison.human.mean_drop.size:
        raise ValueError(
            f"human_to_dnn has {human_to_dnn.size} entries for {comparison.human.mean_drop.size} human dimensions"
        )
    rows = np.flatnonzero(agree_on_different_dimensions(comparison, human_to_dnn))
    confidence = np.minimum(comparison.human.probabilities[rows], comparison.dnn.probabilities[rows])
    # A negative top would slice off rows from the end instead of failing.
    check_integer("top", top, 1)
    rows = rows[np.lexsort((rows, -confidence))][:top]
    frame = _decision_frame(comparison, rows, names)
    frame.insert(frame.columns.get_loc("dnn_dim") + 1, "matched_dnn_dim", human_to_dnn[frame["human_dim"]])
    return frame


def largest_disagreements(
    comparison: DecisionComparison, *, names: Sequence[str] | None = None, top: int = 100
) -> pd.DataFrame:
    """List triplets where the models choose differently, by decreasing probability difference.

    The difference is ``p_human(c) - p_dnn(c)`` for the human model's choice
    ``c``: how much surer the human model is of its choice than the DNN model.

    Args:
        comparison (DecisionComparison): From :func:`compare_decisions`.
        names (Sequence[str] | None): Object names for extra columns.
        top (int): Rows to return, at least 1.

    Returns:
        pd.DataFrame: One row per triplet (see :func:`_decision_frame` columns).

    Raises:
        ValueError: If ``top`` is not a positive integer.
    """
    check_integer("top", top, 1)
    rows = np.flatnonzero(~comparison.agree)
    human_choice = comparison.human_choice[rows]
    difference = (
        comparison.human_probabilities[rows, human_choice] - comparison.dnn_probabilities[rows, human_choice]
    )
    order = np.lexsort((rows, -difference))
    frame = _decision_frame(comparison, rows[order][:top], names)
    frame.insert(frame.columns.get_loc("p_dnn_of_human_choice") + 1, "difference", difference[order][:top])
    return frame


__all__ = [
    "NO_DIMENSION",
    "DecisionComparison",
    "JackknifeResult",
    "agree_on_different_dimensions",
    "agreement_on_different_dimensions",
    "compare_decisions",
    "jackknife_relevance",
    "largest_disagreements",
    "option_probabilities",
]
