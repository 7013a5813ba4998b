"""Warnings attributed to the user's line, however deep in dimalign they are raised.

A fixed ``stacklevel`` is right for one call path only: a helper that warns
with ``stacklevel=3`` names the caller of the public function that called it,
but reached through another public function it names a line of dimalign.
:func:`warn` walks the stack instead and attributes the warning to the first
frame outside this package, as ``warnings.warn(..., skip_file_prefixes=...)``
does from Python 3.12 on (the project supports Python 3.11).
"""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE_PREFIX = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _inside_package(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_PREFIX)


def warn(message: str | Warning, category: type[Warning] = UserWarning) -> None:
    """Issue a warning attributed to the first caller outside the dimalign package.

    The warning's file name and line then point at the user's code, and
    Python's default filter shows each message once per such line. Under
    ``python -m dimalign`` the first such frame is one of ``runpy``; the
    command line logs only the message, so that location is never shown.
    When no frame lies outside dimalign, the outermost frame is named.

    Args:
        message (str | Warning): The warning text, or a warning instance
            (whose class then replaces ``category``).
        category (type[Warning]): The warning class.
    """
    # stacklevel=1 would name this function's frame; each step outward adds 1.
    frame = sys._getframe(0)
    level = 1
    while frame.f_back is not None and _inside_package(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
