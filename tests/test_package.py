"""Package-level names of the libraries."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "package", ["dimalign.embedding", "dimalign.features", "dimalign.analysis", "dimalign.interpret"]
)
def test_lazy_exports_resolve_and_are_listed(package):
    """dir() drives tab completion, so it must list the names imported on first use."""
    module = importlib.import_module(package)
    assert module.__all__
    for name in module.__all__:
        assert name in dir(module)
        value = getattr(module, name)
        # A function named like its module would be shadowed by the submodule.
        assert getattr(value, "__name__", name) == name
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'missing'"):
        getattr(module, "missing")


def test_warning_helper_names_first_frame_outside_package():
    from dimalign._warnings import warn

    with pytest.warns(RuntimeWarning, match="^example$") as caught:
        warn("example", RuntimeWarning)
    assert [warning.filename for warning in caught] == [__file__]
