"""The `>>>` examples in the report modules' docstrings run and hold."""

from __future__ import annotations

import doctest

import pytest

from dimalign.report import config, html, results, stages


@pytest.mark.parametrize("module", [config, html, results, stages], ids=lambda module: module.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
