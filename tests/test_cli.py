"""The ``dimalign`` command line parser."""

from __future__ import annotations

import subprocess
import sys


def test_parser_builds_without_torch():
    # Building the parser (every --help) must not load torch, because importing
    # it takes over a second. Commands import it when they run.
    code = "import sys; from dimalign.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
