"""Tiny hand-made models for the interpret tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn


def build_conv_model(seed: int = 0, stride: int = 1) -> nn.Sequential:
    """Two 3x3 convolutions with ReLU: layers "0" conv, "1" relu, "2" conv, "3" relu."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, stride=stride),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
        )


@pytest.fixture
def make_conv_model():
    """The builder of the tiny model, for tests that need variants or several copies."""
    return build_conv_model


@pytest.fixture
def conv_model() -> nn.Sequential:
    return build_conv_model()


@pytest.fixture
def ridge_coefficients() -> tuple[np.ndarray, np.ndarray]:
    """A map from the 6 pooled features of `make_conv_model` to 5 dimensions."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 5)), rng.normal(size=5)


#: What the stand-in for another program writes into an output folder during a run.
OTHER_PROGRAM_TEXT = "written by another program during the run"


@pytest.fixture
def stop_second_call(monkeypatch):
    """Return ``patch(module, name, error, other_file=None)``: ``module.name`` raises on its second call.

    With ``other_file``, the second call first writes that file, as another
    program writing into the output folder during the run would.
    """

    def patch(module, name: str, error: BaseException, other_file=None) -> None:
        original = getattr(module, name)
        calls = []

        def stop(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                if other_file is not None:
                    other_file.write_text(OTHER_PROGRAM_TEXT)
                raise error
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, stop)

    return patch
