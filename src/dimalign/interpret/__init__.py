"""Interpretation of embedding dimensions through images: Grad-CAM, activation maximisation, edits, grids.

The names below are imported on first use from their modules, so that
``import dimalign.interpret`` (done by every ``dimalign`` command) does not
load torchvision.
"""

from __future__ import annotations

from dimalign._lazy import lazy_exports

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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
