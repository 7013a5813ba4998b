"""Argument checks shared by the estimators and analysis functions.

This module imports neither numpy nor torch, so numpy-only modules such as
:mod:`dimalign.triplets.simulate` can use it without loading torch.
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
