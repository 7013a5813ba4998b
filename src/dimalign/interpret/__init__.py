"""Interpretation of embedding dimensions through images: Grad-CAM, activation maximisation, edits, grids.

The names below are imported on first use from their modules, so that
``import dimalign.interpret`` (done by every ``dimalign`` command) does not
load torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DimensionPredictor": "predictor",
    "map_settings": "predictor",
    "dimension_gradcam": "gradcam",
    "overlay": "gradcam",
    "maximize_dimension": "maximize",
    "manipulate_images": "manipulate",
    "parse_edit": "manipulate",
    "dimension_grid": "grid_images",
    "top_objects": "grids",
    "percentile_grid": "grids",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    # Lists the lazy names too, so tab completion and dir() find them.
    return sorted(set(globals()) | set(_EXPORTS))
