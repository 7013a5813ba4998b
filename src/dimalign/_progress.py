"""The switch that shows or hides the progress bars of the library.

The bars are ``tqdm.auto`` bars. They show on a terminal and in Jupyter, and
stay hidden when the output goes to a file or pipe. Setting the environment
variable ``TQDM_DISABLE`` (tqdm's own switch) to a value other than ``""``,
``0``, ``false``, ``no`` or ``off`` hides every bar, also in Jupyter.
"""

from __future__ import annotations

import os

_OFF_VALUES = frozenset({"", "0", "false", "no", "off"})


def progress_disabled() -> bool | None:
    """Return the ``disable`` argument for a tqdm progress bar of the library.

    tqdm reads ``TQDM_DISABLE`` only when it is imported, and an explicit
    ``disable`` argument overrides it. ``tqdm.notebook`` ignores it
    altogether (tqdm 4.70). So the variable is read here, at each call,
    and a notebook cell that sets ``os.environ["TQDM_DISABLE"] = "1"``
    hides the bars from then on.

    Returns:
        bool | None: True when ``TQDM_DISABLE`` is set to a true value,
        else None, which makes tqdm hide the bar unless its output is a
        terminal or a notebook.
    """
    value = os.environ.get("TQDM_DISABLE", "").strip().lower()
    return True if value not in _OFF_VALUES else None
