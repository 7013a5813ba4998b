"""Argument checks shared by the estimators and analysis functions.

This module imports neither numpy nor torch at import time, so numpy-only
modules such as :mod:`dimalign.triplets.simulate` can use it without loading
torch.
"""

from __future__ import annotations

import numbers
from typing import Any


def check_integer(name: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer (not a bool) in ``[low, high]``.

    Args:
        name (str): The argument's name, for the message.
        value (Any): The value to check. numpy integers pass.
        low (int | None): The smallest valid value, or None for no lower bound.
        high (int | None): The largest valid value, or None for no upper bound.

    Raises:
        ValueError: Naming the argument and the value.

    Example:
        >>> check_integer("n_dims", 2.5, 1)
        Traceback (most recent call last):
        ...
        ValueError: n_dims must be an integer, got 2.5
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high}, got {value}")


def check_random_state(random_state: Any, name: str = "random_state") -> Any:
    """Return a ``numpy.random.Generator`` for a seed, a generator or None.

    ``numpy.random.default_rng`` raises errors that do not name the argument
    (``expected non-negative integer``) and takes ``True`` as the seed 1, so
    seeds are checked here first.

    Args:
        random_state (Any): An integer of at least 0, None for fresh entropy
            from the operating system, or a ``numpy.random.Generator``,
            ``BitGenerator``, ``SeedSequence`` or ``RandomState``, which
            ``numpy.random.default_rng`` accepts.
        name (str): The argument's name, for the message.

    Returns:
        numpy.random.Generator: A generator. A Generator passed in is
        returned as it is, so draws from it advance its state.

    Raises:
        ValueError: Naming the argument and the value.
    """
    import numpy as np

    generators = (np.random.Generator, np.random.BitGenerator, np.random.SeedSequence, np.random.RandomState)
    is_seed = isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool) and random_state >= 0
    if random_state is not None and not is_seed and not isinstance(random_state, generators):
        raise ValueError(
            f"{name} must be a seed (an integer of at least 0), a numpy.random.Generator or None, "
            f"got {random_state!r}"
        )
    return np.random.default_rng(random_state)
