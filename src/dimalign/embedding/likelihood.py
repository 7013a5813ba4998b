"""The triplet odd-one-out likelihood shared by VICE and SPoSE.

For objects i, j, k with embedding rows y_i, y_j, y_k (after ReLU), the model
chooses the pair whose dot product is largest in a softmax sense. The
probability that k is the odd one out, i.e. that (i, j) is the most similar
pair, is

    p(k | i, j, k) = exp(y_i.y_j) / (exp(y_i.y_j) + exp(y_i.y_k) + exp(y_j.y_k)).

The negative log is ``logsumexp(s_ij, s_ik, s_jk) - s_ij``; logsumexp shifts by
the maximum, so dot products in the hundreds stay finite in float32 and in
the thousands in float64.
"""

from __future__ import annotations

from fractions import Fraction

import torch


def pair_similarities(embedding: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
    """Return the dot products of the three pairs of each triplet.

    Args:
        embedding (torch.Tensor): Non-negative embedding, shape ``(n_objects, n_dims)``.
        triplets (torch.Tensor): Object indices, shape ``(n, 3)``, odd one out last.

    Returns:
        torch.Tensor: Shape ``(n, 3)``: columns ``s_ij``, ``s_ik``, ``s_jk``; the
        first column is the pair the recorded choice judged most similar.
    """
    first = embedding[triplets[:, 0]]
    second = embedding[triplets[:, 1]]
    third = embedding[triplets[:, 2]]
    return torch.stack(
        ((first * second).sum(-1), (first * third).sum(-1), (second * third).sum(-1)), dim=-1
    )


def nll_from_similarities(similarities: torch.Tensor) -> torch.Tensor:
    """Return the negative log-likelihood of each recorded choice from :func:`pair_similarities`.

    Args:
        similarities (torch.Tensor): Shape ``(n, 3)``, column 0 the recorded pair.

    Returns:
        torch.Tensor: Shape ``(n,)``, ``logsumexp`` of the row minus column 0.
    """
    return torch.logsumexp(similarities, dim=-1) - similarities[:, 0]


def triplet_nll(embedding: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
    """Return the negative log-likelihood of each recorded choice.

    Args:
        embedding (torch.Tensor): Non-negative embedding, shape ``(n_objects, n_dims)``.
        triplets (torch.Tensor): Object indices, shape ``(n, 3)``, odd one out last.

    Returns:
        torch.Tensor: Shape ``(n,)``.
    """
    return nll_from_similarities(pair_similarities(embedding, triplets))


def choice_log_probabilities(embedding: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
    """Return log-probabilities that each pair is the most similar.

    Args:
        embedding (torch.Tensor): Non-negative embedding, shape ``(n_objects, n_dims)``.
        triplets (torch.Tensor): Object indices, shape ``(n, 3)``, odd one out last.

    Returns:
        torch.Tensor: Shape ``(n, 3)``, columns for the pairs (i, j), (i, k)
        and (j, k). Column 0 belongs to the recorded pair, so
        ``exp(column 0)`` is the probability of the recorded odd one out.
    """
    return torch.log_softmax(pair_similarities(embedding, triplets), dim=-1)


def hits_with_ties(probabilities: torch.Tensor) -> torch.Tensor:
    """Score each triplet as a hit (1), a miss (0) or a share of a tie.

    The prediction is the pair with the highest probability. When m pairs tie
    for the maximum and the recorded pair is among them, the triplet counts
    1/m of a hit, so an embedding that cannot tell pairs apart scores exactly
    1/3 on average, never 1.

    Args:
        probabilities (torch.Tensor): Shape ``(n, 3)``, column 0 the recorded pair.

    Returns:
        torch.Tensor: Shape ``(n,)``, values in {0, 1/3, 1/2, 1}.
    """
    best = probabilities.max(dim=-1, keepdim=True).values
    at_max = probabilities == best
    n_max = at_max.sum(dim=-1).to(probabilities.dtype)
    return at_max[:, 0].to(probabilities.dtype) / n_max


def accuracy_with_ties(probabilities: torch.Tensor) -> float:
    """Return the mean of :func:`hits_with_ties`, rounded once from the exact fraction.

    A float mean of n shares of 1/3 misses 1/3 for most n (such as 9). A
    share 1/m of a hit is 6, 3 or 2 sixths for m = 1, 2 or 3, so the shares
    are summed as integers and divided once, as ``odd_one_out_accuracy`` does.

    Args:
        probabilities (torch.Tensor): Shape ``(n, 3)`` with n > 0, column 0
            the recorded pair. Only comparisons of values are used, so
            log-probabilities work as well.

    Returns:
        float: The accuracy; an all-tied set gives exactly ``1 / 3``.
    """
    best = probabilities.max(dim=-1, keepdim=True).values
    at_max = probabilities == best
    sixths = at_max[:, 0].long() * (6 // at_max.sum(dim=-1))
    return float(Fraction(int(sixths.sum()), 6 * probabilities.shape[0]))
