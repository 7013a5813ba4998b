"""Image to embedding dimensions: DNN features followed by the ridge map, as one torch module.

The three image-level tools (Grad-CAM, activation maximisation and image
manipulations) all need the same differentiable chain::

    image in [0, 1] -> resize and normalise -> DNN up to a layer -> pooling -> x @ coef + intercept

:class:`DimensionPredictor` is that chain. It takes raw RGB tensors with
values in ``[0, 1]`` and applies the tensor part of the model's preprocessing
(resize to the input size, normalise with the channel mean and standard
deviation) as torch operations, so gradients reach the pixels. Steps that
only exist for PIL images (resizing the shorter side, centre crop) stay
outside in :class:`ImagePreprocessing`, which turns a file into the tensor
that the predictor expects.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dimalign.device import resolve_device
from dimalign.features.layers import POOLS, pool_tensor
# Re-exported: these lived here before the commands that only draw images needed them without torch.
from dimalign.features.recorded import extraction_settings, map_settings, same_model_name  # noqa: F401

logger = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the capture hook to skip the layers after the requested one."""


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """Return the submodule called ``layer`` (a name from ``model.named_modules()``).

    A trailing ``:input`` (the feature extractor's way to name a module's
    input) is ignored here.

    Raises:
        ValueError: If there is no such submodule; the message lists the
            closest names.
    """
    layer = layer.removesuffix(":input")
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return modules[layer]
    close = difflib.get_close_matches(layer, [name for name in modules if name], n=8, cutoff=0.4)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise ValueError(
        f"layer {layer!r} not found in {type(model).__name__} "
        f"({len(modules) - 1} named submodules){hint}. "
        "`dimalign list-layers MODEL` prints every name"
    )


@dataclass
class ImagePreprocessing:
    """The PIL part of a model's preprocessing, and the tensor part as plain numbers.

    Attributes:
        pil_steps (Callable | None): PIL image -> PIL image (resize, centre
            crop), applied before conversion to a tensor; None for no steps.
        mean (tuple[float, float, float] | None): Channel means subtracted by
            the model's normalisation (None: no normalisation).
        std (tuple[float, float, float] | None): Channel standard deviations.
        input_size (tuple[int, int] | None): ``(height, width)`` that the model
            was fed in feature extraction; the predictor resizes other sizes
            to it. None keeps every size.
        background (tuple[int, int, int]): RGB colour under transparent
            pixels, as ``dimalign extract --background``.
        exif_transpose (bool): Apply the EXIF orientation tag, unless the
            features were extracted with ``--no-exif-transpose``.
    """

    pil_steps: Callable[[Any], Any] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    input_size: tuple[int, int] | None = None
    background: tuple[int, int, int] = (255, 255, 255)
    exif_transpose: bool = True

    def to_tensor(self, image: Any) -> torch.Tensor:
        """Turn a PIL image into an RGB float tensor ``(3, H, W)`` in ``[0, 1]``."""
        from torchvision.transforms import functional as TF

        image = image.convert("RGB")
        if self.pil_steps is not None:
            image = self.pil_steps(image)
        return TF.to_tensor(image)

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """Read an image file as feature extraction does, and return :meth:`to_tensor` of it.

        The file is decoded by ``dimalign.features.load_rgb`` with the
        :attr:`background` and :attr:`exif_transpose` of the extraction.

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If it cannot be decoded.
        """
        from dimalign.features.decode import ImageReadError, elongation_reason, load_rgb

        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} not found")
        advice = "replace the file or leave it out of the inputs"
        try:
            image = load_rgb(path, self.background, self.exif_transpose)
        except ImageReadError as error:
            raise ValueError(f"cannot read image {error.path}: {error.reason}; {advice}") from error
        reason = elongation_reason(image)
        if reason is not None:
            raise ValueError(f"cannot read image {path}: {reason}; {advice}")
        return self.to_tensor(image)

    @classmethod
    def from_transform(cls, transform: Any) -> ImagePreprocessing:
        """Split a torchvision transform into PIL steps and a normalisation.

        Accepts a ``torchvision.transforms.Compose`` (nested ones too) whose
        steps before ``ToTensor``/``PILToTensor`` work on PIL images and whose
        steps after it are ``Normalize`` or ``ConvertImageDtype``, and the
        preset objects of torchvision weights (``ImageClassification`` with
        ``resize_size``, ``crop_size``, ``mean`` and ``std``). None gives no
        preprocessing.

        Raises:
            ValueError: If a tensor step has no differentiable equivalent here.
        """
        from torchvision import transforms as T

        if transform is None:
            return cls()
        if all(hasattr(transform, name) for name in ("crop_size", "resize_size", "mean", "std")):
            steps = [
                T.Resize(list(transform.resize_size), interpolation=transform.interpolation),
                T.CenterCrop(list(transform.crop_size)),
            ]
            return cls(
                pil_steps=T.Compose(steps),
                mean=tuple(float(value) for value in transform.mean),
                std=tuple(float(value) for value in transform.std),
                input_size=_pair(transform.crop_size[0]),
            )

        pil_steps: list[Any] = []
        mean = std = None
        after_tensor = False
        for step in _flatten_compose(transform):
            if isinstance(step, (T.ToTensor, T.PILToTensor)):
                after_tensor = True
            elif not after_tensor:
                pil_steps.append(step)
            elif isinstance(step, T.Normalize):
                mean = tuple(float(value) for value in step.mean)
                std = tuple(float(value) for value in step.std)
            elif isinstance(step, T.ConvertImageDtype):
                continue  # PILToTensor + ConvertImageDtype(float) is ToTensor.
            else:
                raise ValueError(
                    f"cannot turn the tensor step {step!r} of the model's transform into a "
                    "differentiable operation; supported after ToTensor: Normalize, "
                    "ConvertImageDtype"
                )
        return cls(
            pil_steps=T.Compose(pil_steps) if pil_steps else None,
            mean=mean,
            std=std,
            input_size=_output_size(pil_steps),
        )


def _flatten_compose(transform: Any) -> list[Any]:
    from torchvision import transforms as T

    if isinstance(transform, T.Compose):
        steps = []
        for step in transform.transforms:
            steps += _flatten_compose(step)
        return steps
    return [transform]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = list(size)
    return (int(size[0]), int(size[0])) if len(size) == 1 else (int(size[0]), int(size[1]))


def _output_size(pil_steps: Sequence[Any]) -> tuple[int, int] | None:
    """Return the fixed ``(H, W)`` that the PIL steps produce, or None if it varies."""
    from torchvision import transforms as T

    for step in reversed(pil_steps):
        if isinstance(step, (T.CenterCrop, T.RandomCrop)):
            return _pair(step.size)
        if isinstance(step, T.Resize):
            size = step.size
            # Resize(int) scales the shorter side, so the output size depends on the image.
            if isinstance(size, Sequence) and len(size) == 2:
                return (int(size[0]), int(size[1]))
            return None
    return None


def _weights_kind(weights: str) -> str:
    """Return ``"file"`` for a weights file, else the ``weights`` value itself (``pretrained`` or an enum name)."""
    if weights == "pretrained" or "_Weights." in weights:
        return weights
    return "file"


def _check_given_model(model: Any, settings: dict[str, Any], map_dir: Path) -> None:
    """Reject a loaded model that is not the network whose features the map was fitted on.

    The SHA-256 comparison of :func:`_check_weights_unchanged` needs a
    checksum on both sides. This check covers the rest: another model name,
    another random seed, weights without a checksum (random or packaged)
    in place of recorded ones, and a ``module:function`` network whose
    module file changed since extraction. A model without the ``name`` and ``weights``
    of a ``LoadedModel`` is not checked.

    Raises:
        ValueError: Naming the given and the recorded model or weights.
    """
    recorded_name, given_name = settings.get("model"), getattr(model, "name", None)
    if recorded_name and given_name and not same_model_name(given_name, recorded_name):
        raise ValueError(
            f"the given model {given_name} is not the model {recorded_name} of the features of the map "
            f"{map_dir}, so the predictor would explain another network; pass load_model('{recorded_name}') "
            "with the weights of the features, or leave out the model"
        )
    recorded_module, given_module = settings.get("model_module_sha256"), getattr(model, "module_sha256", None)
    if recorded_module and given_module and recorded_module != given_module:
        raise ValueError(
            f"the given model {given_name} comes from the module file {model.module_file} (SHA-256 "
            f"{given_module}), but the features of the map {map_dir} were extracted with the module file "
            f"{settings.get('model_module_file')} (SHA-256 {recorded_module}), so the predictor would explain "
            "another network; restore that version of the module, or extract the features and fit the map again"
        )
    recorded_weights, given_weights = settings.get("weights"), getattr(model, "weights", None)
    if recorded_weights is None or given_weights is None:
        return
    recorded_sha256, loaded_sha256 = settings.get("weights_sha256"), getattr(model, "weights_sha256", None)
    if recorded_sha256 and loaded_sha256:
        return
    if recorded_weights == "random" or given_weights == "random":
        same = recorded_weights == given_weights and settings.get("seed") == getattr(model, "seed", None)
    elif recorded_sha256:
        same = False
    else:
        # Without a recorded checksum any weights file is accepted, and _check_weights_unchanged warns.
        same = _weights_kind(str(recorded_weights)) == _weights_kind(str(given_weights))
    if same:
        return
    recorded_text = str(recorded_weights)
    if recorded_weights == "random":
        recorded_text = f"random (seed {settings.get('seed')})"
    given_text = model.weights_id if given_weights == "random" else str(given_weights)
    raise ValueError(
        f"the weights {given_text} differ from the weights {recorded_text} of the features of the map "
        f"{map_dir}, so the predictor would explain another network; pass the model loaded with the "
        "weights of the features, or leave out the model"
    )


def _check_weights_unchanged(model: Any, settings: dict[str, Any], map_dir: Path) -> None:
    """Reject weights whose SHA-256 differs from the one recorded when the map's features were extracted.

    A weights file replaced since then (a retrained model saved at the same
    path), or a model loaded from another file, gives a network that the map
    was never fitted on. A copy of the same file elsewhere is accepted. A map
    written before the checksum was recorded is accepted with a warning.

    Raises:
        ValueError: Naming the weights and both checksums.
    """
    recorded, loaded = settings.get("weights_sha256"), getattr(model, "weights_sha256", None)
    if loaded and not recorded:
        logger.warning(
            "the map %s does not record the SHA-256 of its weights (%s), so weights that changed since its "
            "features were extracted cannot be detected; extract the features and fit the map again to "
            "record it", map_dir, settings["weights"],
        )
        return
    if not (recorded and loaded and recorded != loaded):
        return
    loaded_weights = getattr(model, "weights", settings["weights"])
    if str(loaded_weights) != str(settings["weights"]):
        raise ValueError(
            f"the weights {loaded_weights} differ from the weights {settings['weights']} of the features of the "
            f"map {map_dir} (SHA-256 {recorded} then, {loaded} now), so the predictor would explain "
            "another network; pass the weights of the features (CLI: --weights FILE), or extract the "
            "features and fit the map again"
        )
    raise ValueError(
        f"the weights {settings['weights']} have changed since the features of the map {map_dir} "
        f"were extracted (SHA-256 {recorded} then, {loaded} now), so the predictor would explain "
        "another network; restore those weights, or extract the features and fit the map again"
    )


def _check_weights_file_recorded(
    settings: dict[str, Any], map_dir: Path, weights: str | os.PathLike
) -> None:
    """Reject a weights file for a map whose features came from random or packaged weights.

    Such a file would replace a network that no file stored, and no recorded
    checksum could show whether it is the same.

    Raises:
        ValueError: Naming the map's weights and the file.
    """
    from dimalign.features.models import PRETRAINED, RANDOM

    recorded = str(settings["weights"]).lower() if settings["weights"] is not None else ""
    if recorded in RANDOM or recorded in PRETRAINED or "_weights." in recorded:
        seed = f" (seed {settings['seed']})" if recorded in RANDOM else ""
        raise ValueError(
            f"the map {map_dir} was fitted on features of the weights {settings['weights']}{seed}, not of "
            f"a weights file, so the weights {weights} cannot take their place; leave out --weights "
            "(Python: weights=)"
        )


def _load_recorded_user_model(settings: dict[str, Any], map_dir: Path, weights: str | os.PathLike | None,
                              device: str | torch.device) -> Any:
    """Load the ``module:function`` network of a map's features, checking its module file's SHA-256.

    Raises:
        ValueError: If ``weights`` is given (the function sets the weights),
            or :func:`~dimalign.features.user_models.load_user_model` fails.
    """
    from dimalign.features.user_models import load_user_model

    spec = settings["model"]
    if weights is not None:
        raise ValueError(
            f"the map {map_dir} was fitted on features of the network of your own {spec}, whose function "
            f"sets its weights, so --weights {weights} does not apply; leave out --weights (Python: weights=)"
        )
    return load_user_model(spec, device, recorded_sha256=settings.get("model_module_sha256"),
                           recorded_file=settings.get("model_module_file"))


#: How far outside [0, 1] image values may lie, for rounding in resampling.
RANGE_TOLERANCE = 1e-3


def _check_unit_range(images: torch.Tensor) -> None:
    """Reject integer images and values outside ``[0, 1]``, which the normalisation would misread."""
    if not images.is_floating_point():
        raise ValueError(
            f"images must be float tensors with values in [0, 1], got {images.dtype}; "
            "divide 8-bit images by 255"
        )
    low, high = (float(value) for value in torch.aminmax(images.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("images contain NaN or inf; they must be finite values in [0, 1]")
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(
            f"images have values in [{low:.4g}, {high:.4g}] but must be in [0, 1]; "
            "divide 8-bit values by 255, and undo any normalisation"
        )


class DimensionPredictor(nn.Module):
    """Predict every embedding dimension from an image, differentiably.

    The forward pass runs the model's own ``forward``, so no layer is dropped
    or reordered. A forward hook captures the output of ``layer`` and stops
    the pass there. The output is pooled as the features were pooled when the
    ridge map was fitted, and ``y = x @ coef + intercept`` gives the dimensions.

    Every parameter is frozen (``requires_grad`` False) and the wrapped model
    stays in eval mode: ``train()`` is a no-op, because BatchNorm statistics
    or dropout would change the features that the map was fitted on.

    Args:
        model (nn.Module): The DNN. Its parameters are frozen in place.
        layer (str | None): Name of the feature layer in
            ``model.named_modules()``, with ``:input`` for the module's input
            (as in ``dimalign extract``); None uses the model's output.
        coef (array-like): Ridge coefficients in the raw feature space, shape
            ``(n_features, n_dims)``.
        intercept (array-like): Shape ``(n_dims,)``.
        pooling (str): How the layer output becomes features, as in
            ``dimalign extract``: ``flatten`` (all values), ``gap`` (mean over
            the axes after the channel axis) or ``raw`` (the output must
            already be ``(batch, n_features)``).
        preprocessing (ImagePreprocessing | None): The model's preprocessing;
            its ``mean``/``std`` are applied inside ``forward`` and its
            ``input_size`` sets the resize target.
        device (str | torch.device): ``"cpu"``, ``"cuda"`` or ``"auto"``.
        dtype (torch.dtype | None): Compute dtype; default the dtype of the
            model's first floating-point parameter.

    Examples:
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> predictor = DimensionPredictor(model, "1", np.ones((4, 2)), np.zeros(2), pooling="gap")
        >>> predictor(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | None,
        coef: Any,
        intercept: Any,
        *,
        pooling: str = "flatten",
        preprocessing: ImagePreprocessing | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLS:
            raise ValueError(f"invalid pooling {pooling!r}: use {', '.join(POOLS)}")
        self.model = model
        self.layer = layer
        self.pooling = pooling
        self.preprocessing = preprocessing or ImagePreprocessing()
        self._layer_module = find_layer(model, layer) if layer is not None else None

        if dtype is None:
            dtype = next(
                (parameter.dtype for parameter in model.parameters() if parameter.is_floating_point()),
                torch.float32,
            )
        coef = torch.as_tensor(np.asarray(coef), dtype=dtype)
        intercept = torch.as_tensor(np.asarray(intercept), dtype=dtype)
        if coef.ndim != 2:
            raise ValueError(f"coef must be 2-D (n_features, n_dims), got shape {tuple(coef.shape)}")
        if coef.shape[1] == 0:
            raise ValueError(
                f"coef has shape {tuple(coef.shape)}: the map predicts no dimension, so there is "
                "nothing to explain; fit the map on an embedding with at least one dimension"
            )
        if intercept.shape != (coef.shape[1],):
            raise ValueError(
                f"intercept has shape {tuple(intercept.shape)} but coef has {coef.shape[1]} "
                f"dimensions; expected ({coef.shape[1]},)"
            )
        bad = torch.nonzero(~torch.isfinite(coef).all(dim=0) | ~torch.isfinite(intercept)).flatten()
        if bad.numel():
            raise ValueError(
                f"coef or intercept of dimensions {bad[:20].tolist()} contain NaN or inf (in {dtype}), "
                "so every prediction of them would be NaN; refit the map"
            )
        self.register_buffer("coef", coef)
        self.register_buffer("intercept", intercept)
        mean = self.preprocessing.mean or (0.0, 0.0, 0.0)
        std = self.preprocessing.std or (1.0, 1.0, 1.0)
        self.register_buffer("mean", torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=dtype).view(1, -1, 1, 1))

        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.to(device=resolve_device(device), dtype=dtype)
        super().train(False)

    @property
    def n_dims(self) -> int:
        """Number of predicted embedding dimensions."""
        return int(self.coef.shape[1])

    @property
    def n_features(self) -> int:
        """Number of pooled features the map expects."""
        return int(self.coef.shape[0])

    @property
    def device(self) -> torch.device:
        """Device of the map and the model."""
        return self.coef.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the map and the model."""
        return self.coef.dtype

    @property
    def input_size(self) -> tuple[int, int] | None:
        """``(H, W)`` the model is fed, or None where any size is used as given."""
        return self.preprocessing.input_size

    def train(self, mode: bool = True) -> DimensionPredictor:
        """Keep eval mode: the map is only valid for the features of the eval-mode model.

        Args:
            mode (bool): Ignored. ``nn.Module.train`` takes it, but the
                predictor stays in eval mode.

        Returns:
            DimensionPredictor: self.
        """
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Apply the tensor part of the preprocessing: resize to ``input_size``, then normalise.

        Args:
            images (torch.Tensor): RGB in ``[0, 1]``, shape ``(B, 3, H, W)``.

        Returns:
            torch.Tensor: The model input, shape ``(B, 3, *input_size)``.

        Raises:
            ValueError: If the images are not float RGB with values in ``[0, 1]``
                (within :data:`RANGE_TOLERANCE`).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (batch, 3, H, W), got {tuple(images.shape)}")
        _check_unit_range(images)
        images = images.to(device=self.device, dtype=self.dtype)
        size = self.input_size
        if size is not None and tuple(images.shape[-2:]) != tuple(size):
            # Antialiased bilinear resizing is differentiable and matches PIL's
            # resampling closely when shrinking.
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (images - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Return the pooled layer output ``(B, n_features)`` for raw images in ``[0, 1]``.

        Args:
            images (torch.Tensor): RGB in ``[0, 1]``, shape ``(B, 3, H, W)``.

        Returns:
            torch.Tensor: The features that the map takes, shape ``(B, n_features)``.

        Raises:
            ValueError: If the images are not float RGB in ``[0, 1]``, or the
                layer and pooling do not give the ``n_features`` of the map.
        """
        inputs = self.normalize(images)
        if self._layer_module is None:
            output = self.model(inputs)
        else:
            output = self._run_to_layer(inputs)
        if not isinstance(output, torch.Tensor):
            raise ValueError(
                f"layer {self.layer!r} returns {type(output).__name__}, not a tensor; "
                "choose a layer whose output is a single tensor"
            )
        features = pool_tensor(output, self.pooling)
        if features.ndim != 2:
            raise ValueError(
                f"layer {self.layer!r} with pooling {self.pooling!r} gives shape "
                f"{tuple(features.shape)}, not (batch, features); use pooling 'flatten' or 'gap'"
            )
        if features.shape[1] != self.n_features:
            raise ValueError(
                f"layer {self.layer!r} with pooling {self.pooling!r} gives {features.shape[1]} "
                f"features, but the map expects {self.n_features}; was the map fitted on "
                "features of this model, layer and pooling?"
            )
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Predict the embedding of each image.

        Args:
            images (torch.Tensor): RGB in ``[0, 1]``, shape ``(B, 3, H, W)``
                (or ``(3, H, W)`` for one image).

        Returns:
            torch.Tensor: Predicted dimensions, shape ``(B, n_dims)`` (or
            ``(n_dims,)`` for one image).
        """
        single = images.ndim == 3
        if single:
            images = images.unsqueeze(0)
        prediction = self.features(images) @ self.coef + self.intercept
        return prediction[0] if single else prediction

    def _run_to_layer(self, inputs: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def capture(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output)
            raise _StopForward

        def capture_input(module: nn.Module, args: Any) -> None:
            captured.append(args[0] if args else None)
            raise _StopForward

        # Registered per call, after any hooks that other tools (Grad-CAM)
        # placed on the same layer, so those hooks still see the output.
        if self.layer.endswith(":input"):
            handle = self._layer_module.register_forward_pre_hook(capture_input)
        else:
            handle = self._layer_module.register_forward_hook(capture)
        try:
            self.model(inputs)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ValueError(
                f"layer {self.layer!r} did not run in the model's forward pass; "
                "choose a layer that the forward pass uses"
            )
        return captured[0]

    @classmethod
    def from_map_dir(
        cls,
        map_dir: str | os.PathLike,
        model: Any = None,
        *,
        device: str | torch.device = "cpu",
        weights: str | os.PathLike | None = None,
    ) -> DimensionPredictor:
        """Build the predictor from the output directory of ``dimalign map``.

        Args:
            map_dir (str | os.PathLike): Folder with ``ridge_map.npz`` and a
                ``manifest.json`` that names the model, layer and pooling of
                the features, directly or through its features input (see
                :func:`map_settings`).
            model (LoadedModel | None): An already loaded model (from
                ``dimalign.features.load_model``); None loads the one the
                manifest names, with the same weights. A ``module:function``
                network is imported from the current Python path, and its
                module file must have the SHA-256 that the extraction recorded.
            device (str | torch.device): Where to run.
            weights (str | os.PathLike | None): A weights file to load in
                place of the one the manifest names, such as the same file
                moved elsewhere. Its SHA-256 must match the recorded one.

        Raises:
            FileNotFoundError: If the folder or its files are missing, or
                the weights file that the manifest names.
            ValueError: If the manifests do not name the model or the layer,
                the model's weights differ from those of the features (by
                the SHA-256 that the extraction recorded), or the module of a
                ``module:function`` network is not found or changed.
        """
        from dimalign.analysis.ridge import RidgeMap

        map_dir = Path(map_dir)
        if map_dir.is_file():
            # RidgeMap.load takes the file too, but the model settings live in the folder's manifest.
            raise ValueError(
                f"{map_dir} is a file; pass the folder that 'dimalign map' wrote ({map_dir.parent})"
            )
        ridge = RidgeMap.load(map_dir)
        coef = np.reshape(ridge.coef_, (ridge.n_features_in_, -1))
        if coef.shape[1] == 0:
            # Checked here so that the error comes before the model loads.
            raise ValueError(
                f"{map_dir / 'ridge_map.npz'} maps {coef.shape[0]} features to no dimension, so there is "
                "nothing to explain; rerun dimalign map with an embedding that kept at least one dimension"
            )
        settings = map_settings(map_dir)
        if model is None:
            from dimalign.features import load_model
            from dimalign.features.user_models import is_model_spec

            if not settings["model"]:
                raise ValueError(
                    f"{map_dir}/manifest.json and its features input name no model; "
                    "pass the loaded model explicitly"
                )
            if is_model_spec(settings["model"]):
                model = _load_recorded_user_model(settings, map_dir, weights, device)
            else:
                if weights is not None:
                    _check_weights_file_recorded(settings, map_dir, weights)
                try:
                    model = load_model(
                        settings["model"], weights=weights if weights is not None else settings["weights"],
                        device=device, seed=settings["seed"],
                    )
                except FileNotFoundError as error:
                    if weights is not None:
                        raise
                    raise FileNotFoundError(
                        f"{error}: the map {map_dir} was fitted on features of these weights; pass their new "
                        "place with --weights FILE (Python: weights=)"
                    ) from error
        elif weights is not None:
            raise ValueError(
                f"both a loaded model and weights={weights} were given; pass the model or the weights to load"
            )
        else:
            _check_given_model(model, settings, map_dir)
        _check_weights_unchanged(model, settings, map_dir)
        # Images are decoded as the features were: same background and EXIF handling.
        preprocessing = replace(
            ImagePreprocessing.from_transform(getattr(model, "transform", None)),
            background=settings["background"], exif_transpose=settings["exif_transpose"],
        )
        predictor = cls(
            model.model,
            settings["layer"],
            ridge.coef_,
            ridge.intercept_,
            pooling=settings["pooling"],
            preprocessing=preprocessing,
            device=device,
            dtype=torch.float32,
        )
        logger.info(
            "predictor from %s: model %s, layer %s, pooling %s, %d features -> %d dimensions",
            map_dir, settings["model"], settings["layer"], settings["pooling"],
            predictor.n_features, predictor.n_dims,
        )
        return predictor
