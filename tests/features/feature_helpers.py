"""Helpers shared by the feature extraction tests: a tiny model and random images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from dimalign.features.models import LoadedModel


def make_tiny_model(seed: int = 0) -> LoadedModel:
    """A 3 -> 4 channel 3x3 conv, in-place ReLU, global pool and a 4 -> 2 Linear.

    Layers: ``0`` conv, ``1`` ReLU, ``2`` AdaptiveAvgPool2d, ``3`` Flatten, ``4`` Linear.
    Its transform resizes any image to 8 x 8 and scales pixels to [0, 1].
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 2),
        ).eval()
    transform = T.Compose([T.Resize((8, 8)), T.ToTensor()])
    return LoadedModel(model, transform, "tiny", f"random-init(seed={seed})", None, "4:input",
                       torch.device("cpu"), seed)


def write_random_images(folder: Path, count: int, size: int = 12, seed: int = 0) -> list[Path]:
    """Write ``count`` random RGB PNGs named img00.png, img01.png, ... and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        path = folder / f"img{index:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths
