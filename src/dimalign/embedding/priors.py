"""Log densities of the VICE priors, computed in log space so that nothing underflows.

The spike-and-slab prior of VICE is the two-component mixture

    p(w) = pi * N(w; 0, spike^2) + (1 - pi) * N(w; 0, slab^2),

a narrow "spike" that pulls weights to zero and a wide "slab" that lets a few
weights grow. Its log is ``logsumexp(log pi + log N_spike, log(1 - pi) + log N_slab)``.
Evaluating the densities first and taking the log afterwards underflows: the
spike density at ``w = 50`` with sd 0.25 is exp(-20000), which is 0 in float64.
"""

from __future__ import annotations

import math

import torch

PRIORS = ("mixture", "authors")

#: log(sqrt(2 pi)), the constant of every normal log density.
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def normal_log_prob(x: torch.Tensor, loc: float | torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Return log N(x; loc, scale^2) elementwise.

    Args:
        x (torch.Tensor): Points, any shape.
        loc (float | torch.Tensor): Mean, broadcastable to ``x``.
        scale (float | torch.Tensor): Standard deviation (> 0), broadcastable.

    Returns:
        torch.Tensor: Log densities, shape of ``x``.

    Examples:
        >>> round(float(normal_log_prob(torch.tensor(50.0, dtype=torch.float64), 0.0, 0.25)), 2)
        -19999.53
        >>> round(float(normal_log_prob(torch.tensor(0.0), 0.0, 1.0).exp()), 5)
        0.39894
    """
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    z = (x - loc) / scale
    return -0.5 * z * z - torch.log(scale) - LOG_SQRT_2PI


def spike_slab_log_prob(
    w: torch.Tensor, pi: float = 0.5, spike: float = 0.25, slab: float = 2.0, variant: str = "mixture"
) -> torch.Tensor:
    """Return the log density of the spike-and-slab prior elementwise.

    Args:
        w (torch.Tensor): Weights, any shape.
        pi (float): Weight of the spike component, in (0, 1).
        spike (float): Standard deviation of the spike (> 0).
        slab (float): Standard deviation of the slab (> ``spike``).
        variant (str): ``"mixture"``: the log of the mixture density, computed
            with logsumexp. ``"authors"``: ``pi * log N_spike + (1 - pi) *
            log N_slab``, as the published VICE code for the paper computes it.
            That sum of weighted log densities is itself the log of one
            Gaussian (up to a constant) with precision ``pi / spike^2 + (1 -
            pi) / slab^2``: for the defaults an sd of about 0.35, so it has no
            slab and shrinks every weight alike.

    Returns:
        torch.Tensor: Log densities, shape of ``w``.
    """
    log_spike = normal_log_prob(w, 0.0, spike)
    log_slab = normal_log_prob(w, 0.0, slab)
    if variant == "mixture":
        stacked = torch.stack((log_spike + math.log(pi), log_slab + math.log1p(-pi)))
        return torch.logsumexp(stacked, dim=0)
    if variant == "authors":
        return pi * log_spike + (1.0 - pi) * log_slab
    raise ValueError(f"unknown prior variant {variant!r}: use one of {PRIORS}")
