"""Reading intermediate layers with forward hooks, and pooling them into feature rows.

A layer is named by its module's qualified name in ``model.named_modules()``
(``features.30``, ``classifier.4``), the names that
``torchvision.models.feature_extraction.get_graph_node_names`` gives for modules.
``NAME:input`` takes the module's input instead of its output, such as
``classifier.6:input`` for the input of VGG-16's last Linear layer.

Pooling per layer:

* ``raw``: the output as it is, one array of shape ``(n, *output_shape)``.
* ``flatten``: ``(n, prod(output_shape))``, the usual feature matrix.
* ``gap``: global average pooling, the mean over every axis after the channel
  axis (axis 1), giving ``(n, channels)``. For a conv map ``(n, C, H, W)`` that is
  one spatial mean per channel. 3-D outputs (a transformer's tokens) and 4-D
  outputs that look channels-last (``H == W != C`` in ``(n, H, W, C)``) are
  rejected, since their axis 1 is not the channel axis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

POOLS = ("raw", "flatten", "gap")


@dataclass(frozen=True)
class LayerRequest:
    """One layer to read: the module, whether its input or output, and the pooling.

    Attributes:
        name (str): The layer as requested, such as ``"classifier.4:input"``.
        module_name (str): The module's name in ``model.named_modules()``.
        use_input (bool): Read the module's input instead of its output.
        pool (str): ``"raw"``, ``"flatten"`` or ``"gap"``.
    """

    name: str
    module_name: str
    use_input: bool
    pool: str


def parse_layers(layers: str | Sequence[str], pools: str | Sequence[str],
                 model: nn.Module, model_name: str | None = None) -> list[LayerRequest]:
    """Check layer names against ``model`` and pair each with its pooling.

    Args:
        layers (str | Sequence[str]): Module names, each optionally ending in
            ``:input``; a string is one name.
        pools (str | Sequence[str]): One pooling for all layers or one per layer.
        model (nn.Module): The model whose modules are named.
        model_name (str | None): The name that messages give the model, such
            as ``vgg16`` or a ``module:function`` spec.

    Returns:
        list[LayerRequest]: One request per layer, in the given order.

    Raises:
        ValueError: For an unknown or repeated layer, an unknown pooling, or a
            number of poolings that is neither 1 nor the number of layers.
    """
    # A string is one layer name, not a sequence of one-character names.
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("no layer requested: name at least one layer")
    pools = [pools] if isinstance(pools, str) else list(pools)
    if len(pools) == 1:
        pools = pools * len(layers)
    if len(pools) != len(layers):
        raise ValueError(
            f"{len(pools)} poolings for {len(layers)} layers: give one pooling for all "
            "layers or one per layer"
        )
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers {list(layers)} name a layer twice")

    modules = dict(model.named_modules())
    requests = []
    for layer, pool in zip(layers, pools):
        if pool not in POOLS:
            raise ValueError(f"invalid pooling {pool!r} for layer {layer}: use {', '.join(POOLS)}")
        module_name, _, suffix = layer.partition(":")
        if suffix not in ("", "input"):
            raise ValueError(f"invalid layer {layer!r}: the only suffix is :input")
        if module_name not in modules or module_name == "":
            listing = f"dimalign list-layers {model_name}" if model_name else "dimalign list-layers"
            raise ValueError(
                f"model{' ' + model_name if model_name else ''} has no layer {module_name!r}; "
                f"list its layers with `{listing}`"
            )
        requests.append(LayerRequest(layer, module_name, suffix == "input", pool))
    return requests


def pool_tensor(tensor: torch.Tensor, pool: str) -> torch.Tensor:
    """Pool a batch ``(n, ...)`` of layer outputs (see the module docstring).

    Args:
        tensor (torch.Tensor): Layer outputs, shape ``(n, ...)``.
        pool (str): ``"raw"``, ``"flatten"`` or ``"gap"``.

    Returns:
        torch.Tensor: The pooled outputs, one row per input.

    Raises:
        ValueError: For ``gap`` on an output without axes after the channel axis.

    Example:
        >>> pool_tensor(torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]]), "gap")
        tensor([[3.]])
    """
    if pool == "raw":
        return tensor
    if pool == "flatten":
        return tensor.reshape(tensor.shape[0], -1)
    if pool == "gap":
        if tensor.ndim < 3:
            raise ValueError(
                f"gap needs an output with axes after the channel axis, got shape "
                f"{tuple(tensor.shape)}; use raw or flatten for this layer"
            )
        # gap assumes (n, channels, ...). A transformer's (n, tokens, channels)
        # and a channels-last map (n, H, W, C), such as torchvision Swin's,
        # would give per-token or per-row means of the channels instead.
        if tensor.ndim == 3:
            raise ValueError(
                f"gap is ambiguous for the 3-D output of shape {tuple(tensor.shape)}, which is "
                "(n, tokens, channels) in a transformer, where gap would average each token's "
                "channels; use flatten, or raw and pool the tokens yourself"
            )
        # NOTE: a shape test only: a channels-last map with H != W passes, and a
        # channels-first map with C == H != W is rejected.
        if tensor.ndim == 4 and tensor.shape[1] == tensor.shape[2] != tensor.shape[3]:
            raise ValueError(
                f"the output of shape {tuple(tensor.shape)} looks channels-last (n, H, W, C), "
                "where gap would average each row instead of each channel; use flatten, or raw "
                "and pool it yourself"
            )
        return tensor.mean(dim=tuple(range(2, tensor.ndim)))
    raise ValueError(f"invalid pooling {pool!r}: use {', '.join(POOLS)}")


class _AllLayersRead(Exception):
    """Raised inside a hook to end the forward pass once every requested layer is read."""


class LayerReader:
    """Forward hooks that read the requested layers of one forward pass.

    The forward pass ends as soon as the last requested layer is read, so reading
    an early layer does not pay for the rest of the network. A module called more
    than once in a forward pass is read at its first call, so callers reject such
    modules first with :func:`check_single_calls`.

    Args:
        model (nn.Module): The model.
        requests (Sequence[LayerRequest]): Layers and their pooling.
    """

    def __init__(self, model: nn.Module, requests: Sequence[LayerRequest]) -> None:
        self.model = model
        self.requests = list(requests)

    def __call__(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run ``pixels`` ``(n, 3, H, W)`` through the model and return the pooled layers."""
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())
        handles = []
        try:
            for request in self.requests:
                module = modules[request.module_name]
                if request.use_input:
                    handles.append(module.register_forward_pre_hook(
                        self._input_hook(request, captured)))
                else:
                    handles.append(module.register_forward_hook(
                        self._output_hook(request, captured)))
            with torch.inference_mode():
                try:
                    self.model(pixels)
                except _AllLayersRead:
                    pass
        finally:
            for handle in handles:
                handle.remove()

        missing = [request.name for request in self.requests if request.name not in captured]
        if missing:
            raise ValueError(f"layers {missing} were not called in the forward pass; "
                             "choose modules that the model's forward uses")
        return captured

    def _store(self, request: LayerRequest, value, captured: dict[str, torch.Tensor]) -> None:
        if request.name in captured:
            return
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"layer {request.name} gives a {type(value).__name__}, not a tensor; "
                "choose a module that returns a tensor"
            )
        try:
            pooled = pool_tensor(value.detach(), request.pool)
        except ValueError as error:
            raise ValueError(f"layer {request.name}: {error}") from None
        # A module followed by an in-place op (ReLU(inplace=True)) hands the
        # hook the very tensor that the op overwrites after the hook returns,
        # so raw and flattened outputs, which are views of it, must be copied
        # now. gap's mean is already a new tensor, computed before the overwrite.
        if request.pool != "gap":
            pooled = pooled.clone()
        captured[request.name] = pooled
        if len(captured) == len(self.requests):
            raise _AllLayersRead

    def _output_hook(self, request: LayerRequest, captured: dict[str, torch.Tensor]):
        def hook(module: nn.Module, args, output) -> None:
            self._store(request, output, captured)
        return hook

    def _input_hook(self, request: LayerRequest, captured: dict[str, torch.Tensor]):
        def hook(module: nn.Module, args) -> None:
            self._store(request, args[0] if args else None, captured)
        return hook


def count_calls(model: nn.Module, pixels: torch.Tensor) -> dict[str, int]:
    """Run a full forward pass and return how often each named module is called.

    Args:
        model (nn.Module): The network.
        pixels (torch.Tensor): A preprocessed batch ``(n, 3, H, W)``.

    Returns:
        dict[str, int]: Calls by module name. Modules never called are left out.
    """
    counts: dict[str, int] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args) -> None:
            counts[name] = counts.get(name, 0) + 1
        return hook

    _forward_with_hooks(model, pixels, lambda name, module: module.register_forward_pre_hook(make_hook(name)))
    return counts


def _forward_with_hooks(
    model: nn.Module, pixels: torch.Tensor, add_hook: Callable[[str, nn.Module], object]
) -> None:
    """Run one forward pass with ``add_hook(name, module)`` applied to every named module.

    ``add_hook`` returns the hook's handle; every handle is removed after the
    pass, also when it fails.
    """
    handles = [add_hook(name, module) for name, module in model.named_modules() if name]
    try:
        with torch.inference_mode():
            model(pixels)
    finally:
        for handle in handles:
            handle.remove()


def check_single_calls(model: nn.Module, requests: Sequence[LayerRequest],
                       pixels: torch.Tensor) -> None:
    """Reject requested modules that one forward pass calls more than once.

    Such a module, for example the ReLU that torchvision's ResNet blocks call
    after each convolution and after the residual sum, has several outputs per
    pass. :class:`LayerReader` reads the first call, which is rarely the output
    the name suggests (``layer1.0.relu`` of ResNet-50 gives 64 channels, the
    block's output 256), so the choice is an error instead.

    Args:
        model (nn.Module): The model.
        requests (Sequence[LayerRequest]): Layers to check.
        pixels (torch.Tensor): A preprocessed batch; only its first image is run.

    Raises:
        ValueError: Naming each such layer and how often it is called.
    """
    counts = count_calls(model, pixels[:1])
    repeated = [(request.name, counts[request.module_name]) for request in requests
                if counts.get(request.module_name, 0) > 1]
    if repeated:
        listed = ", ".join(f"{name} ({count} times)" for name, count in repeated)
        raise ValueError(
            f"layers called more than once in one forward pass have no single output: {listed}. "
            "Choose the enclosing block (for ResNet's layer1.0.relu, layer1.0) or a module called "
            "once; `dimalign list-layers MODEL --shapes` marks the modules called more than once"
        )


def list_layers(model: nn.Module) -> list[tuple[str, str]]:
    """Return ``(name, module type)`` for every named module, in definition order.

    Args:
        model (nn.Module): The network.

    Returns:
        list[tuple[str, str]]: The module names and their class names.
    """
    return [(name, type(module).__name__) for name, module in model.named_modules() if name]


def layer_shapes(model: nn.Module, pixels: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Return each module's output shape (without the batch axis) for an input batch.

    Modules whose output is not a tensor are left out.

    Args:
        model (nn.Module): The network.
        pixels (torch.Tensor): A preprocessed batch ``(n, 3, H, W)``.

    Returns:
        dict[str, tuple[int, ...]]: Output shape by module name.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args, output) -> None:
            if isinstance(output, torch.Tensor) and name not in shapes:
                shapes[name] = tuple(output.shape[1:])
        return hook

    _forward_with_hooks(model, pixels, lambda name, module: module.register_forward_hook(make_hook(name)))
    return shapes
