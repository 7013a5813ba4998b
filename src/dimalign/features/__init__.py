"""Image datasets and DNN feature extraction (torchvision, timm, the builtin EfficientNet-Lite0).

>>> from dimalign.features import load_model, extract_features  # doctest: +SKIP
>>> result = extract_features("photos/", "features/", model="efficientnet_lite0")  # doctest: +SKIP

Names are imported on first use, so that ``import dimalign.features`` (done by
every ``dimalign`` command to register ``extract``) does not load torchvision.
"""

from __future__ import annotations

from dimalign._lazy import lazy_exports

_EXPORTS = {
    "load_model": "models",
    "LoadedModel": "models",
    "imagenet_transform": "models",
    "efficientnet_lite0_transform": "models",
    "extract_features": "extract",
    "compute_features": "extract",
    "read_layers": "extract",
    "ExtractionResult": "extract",
    "ImageList": "datasets",
    "ImageDataset": "datasets",
    "ImageReadError": "decode",
    "find_images": "datasets",
    "read_image_list": "datasets",
    "list_images": "datasets",
    "load_rgb": "decode",
    "to_rgb": "decode",
    "DEFAULT_EXTENSIONS": "datasets",
    "list_layers": "layers",
    "layer_shapes": "layers",
    "pool_tensor": "layers",
    "LayerReader": "layers",
    "parse_layers": "layers",
    "EfficientNetLite0": "efficientnet_lite",
    "efficientnet_lite0": "efficientnet_lite",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
