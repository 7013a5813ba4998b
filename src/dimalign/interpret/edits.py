"""Names, default parameters and help texts of the image edits of ``dimalign manipulate``.

This table does not import torch, so the command line can list the edits in
its help without loading torch. :mod:`dimalign.interpret.manipulate` pairs
each entry with the function that applies it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EditSpec:
    """Description of one kind of edit: default parameter, mask use and help text."""

    default: float | None
    uses_mask: bool = False
    help: str = ""


EDIT_SPECS: dict[str, EditSpec] = {
    "grayscale": EditSpec(None, help="BT.601 luma"),
    "hue": EditSpec(90.0, help="hue rotation in degrees"),
    "saturation": EditSpec(0.5, help="saturation factor"),
    "brightness": EditSpec(0.6, help="brightness factor"),
    "contrast": EditSpec(0.5, help="contrast factor"),
    "blur": EditSpec(3.0, help="Gaussian sigma in pixels"),
    "background": EditSpec(0.5, True, help="gray level outside the foreground"),
    "occlude": EditSpec(0.5, help="fraction of height and width covered"),
    "silhouette": EditSpec(None, True, help="shape only"),
}

DEFAULT_EDITS = (
    "grayscale", "hue:90", "hue:180", "saturation:0", "brightness:0.6", "contrast:0.5",
    "blur:3", "background:0.5", "occlude:0.5", "silhouette",
)
