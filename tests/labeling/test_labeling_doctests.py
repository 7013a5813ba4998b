"""The `>>>` examples in the labelling modules' docstrings run and hold."""

from __future__ import annotations

import doctest

import pytest

from dimalign.labeling import analysis, semantic


@pytest.mark.parametrize("module", [analysis, semantic], ids=lambda module: module.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
