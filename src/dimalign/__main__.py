"""Run the ``dimalign`` command as ``python -m dimalign``.

This works without the installed ``dimalign`` script, for example from a
checkout with ``PYTHONPATH=src`` or in an environment whose ``bin`` folder
is not on ``PATH``.
"""

import sys

from dimalign.cli import main

sys.exit(main())
