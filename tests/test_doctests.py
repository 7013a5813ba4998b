"""The `>>>` examples in every module's docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"


def modules_with_examples() -> list[str]:
    """Return the dotted names of the dimalign modules whose source contains a ``>>>`` example."""
    names = []
    for path in sorted((SOURCE / "dimalign").rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(SOURCE).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_examples_are_found():
    assert {"dimalign.embedding.vice", "dimalign.embedding.spose", "dimalign.report.config"} <= set(
        modules_with_examples()
    )


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    # A module whose only examples are marked +SKIP (they need downloads or photos) runs none.
    assert result.attempted > 0 or "doctest: +SKIP" in Path(module.__file__).read_text(encoding="utf-8")
    assert result.failed == 0
