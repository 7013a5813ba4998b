"""Tests of the strict JSON writer of :mod:`dimalign.io.files`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dimalign.io.files import replace_non_finite, write_json_atomic, write_manifest


def reject_constant(name):
    """Reject the NaN and Infinity constants that strict JSON parsers reject."""
    raise ValueError(f"invalid JSON constant {name}")


def test_write_json_non_finite_as_null(tmp_path):
    data = {
        "nan": math.nan,
        "inf": math.inf,
        "minus_inf": -math.inf,
        "numpy_nan": np.float64("nan"),
        "numpy_float32_inf": np.float32("inf"),
        "nested": {"values": [1.5, math.nan, (2, math.inf)]},
        "finite": 0.25,
        "integer": 3,
        "flag": True,
        "text": "NaN",
    }
    path = write_json_atomic(tmp_path / "out.json", data)

    loaded = json.loads(path.read_text(encoding="utf-8"), parse_constant=reject_constant)
    assert loaded["nan"] is None
    assert loaded["inf"] is None
    assert loaded["minus_inf"] is None
    assert loaded["numpy_nan"] is None
    assert loaded["numpy_float32_inf"] is None
    assert loaded["nested"] == {"values": [1.5, None, [2, None]]}
    assert loaded["finite"] == 0.25
    assert loaded["integer"] == 3
    assert loaded["flag"] is True
    assert loaded["text"] == "NaN"
    assert path.read_text(encoding="utf-8").endswith("}\n")


def test_write_json_nan_from_default_raises(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("previous\n", encoding="utf-8")

    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json_atomic(path, {"value": object()}, default=lambda value: math.nan)

    assert path.read_text(encoding="utf-8") == "previous\n"
    assert sorted(item.name for item in tmp_path.iterdir()) == ["out.json"]


def test_replace_non_finite_keeps_large_integers():
    assert replace_non_finite({"big": 10**400, "small": -1}) == {"big": 10**400, "small": -1}


def test_damaged_manifest_names_the_file(tmp_path):
    from dimalign.io.files import read_manifest

    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"manifest.json is not valid JSON .* rerun the step that wrote it"):
        read_manifest(tmp_path)


def test_manifest_records_numpy_arrays(tmp_path):
    settings = {"alphas": np.array([0.5, 2.0]), "grid": np.array([[1, 2], [3, 4]]), "seed": np.int64(7),
                "scale": np.array(1.5), "missing": np.array([1.0, np.nan])}
    write_manifest(tmp_path, step="map", settings=settings)

    loaded = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"), parse_constant=reject_constant)
    assert loaded["settings"]["alphas"] == [0.5, 2.0]
    assert loaded["settings"]["grid"] == [[1, 2], [3, 4]]
    assert loaded["settings"]["seed"] == 7
    assert loaded["settings"]["scale"] == 1.5
    assert loaded["settings"]["missing"] == [1.0, None]
