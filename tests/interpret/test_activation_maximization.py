"""Activation maximisation with the built-in Fourier generator and a user generator."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from dimalign.interpret.generators import FourierGenerator, augment, load_generator, total_variation
from dimalign.interpret.maximize import maximize_dimension
from dimalign.interpret.predictor import DimensionPredictor


@pytest.fixture
def predictor(conv_model, ridge_coefficients):
    coef, intercept = ridge_coefficients
    return DimensionPredictor(conv_model, "3", coef, intercept, pooling="gap")


@pytest.mark.parametrize(("dim", "seed"), [(0, 0), (3, 1), (4, 2)])
def test_maximize_increases_dimension(predictor, dim, seed):
    result = maximize_dimension(
        predictor, dim, steps=15, n_init=6, n_images=3, image_size=16, random_state=seed
    )

    assert result.images.shape == (3, 3, 16, 16)
    assert result.before.shape == (3,)
    assert (result.after > result.before).all(), (result.before, result.after)


def test_maximize_starts_from_best_random_latents(predictor):
    generator = FourierGenerator(16)
    random = torch.Generator().manual_seed(7)
    candidates = generator.sample_latent(5, random)
    with torch.no_grad():
        values = predictor(generator(candidates))[:, 2].numpy()

    result = maximize_dimension(predictor, 2, generator=generator, steps=0, n_init=5, n_images=2, random_state=7)

    np.testing.assert_allclose(np.sort(result.before), np.sort(values)[-2:], rtol=1e-5)
    np.testing.assert_allclose(result.after, result.before, rtol=1e-6)


def test_maximize_reproducible(predictor):
    first = maximize_dimension(predictor, 1, steps=3, n_init=3, n_images=2, image_size=16, random_state=4)
    second = maximize_dimension(predictor, 1, steps=3, n_init=3, n_images=2, image_size=16, random_state=4)

    torch.testing.assert_close(first.images, second.images)


def test_maximize_uses_module_function_generator(predictor, tmp_path, monkeypatch):
    (tmp_path / "tiny_generator_module.py").write_text(textwrap.dedent(
        """
        import torch
        from torch import nn

        CALLS = {"build": 0, "forward": 0}


        class TinyGenerator(nn.Module):
            latent_dim = 12

            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(12, 3 * 8 * 8)

            def forward(self, latent):
                CALLS["forward"] += 1
                return torch.sigmoid(self.linear(latent)).view(-1, 3, 8, 8)


        def build():
            CALLS["build"] += 1
            return TinyGenerator()
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))

    generator = load_generator("tiny_generator_module:build")
    result = maximize_dimension(predictor, 0, generator=generator, steps=4, n_init=3, n_images=2)

    import tiny_generator_module

    assert tiny_generator_module.CALLS["build"] == 1
    assert tiny_generator_module.CALLS["forward"] >= 4
    assert result.images.shape == (2, 3, 8, 8)
    # The caller's generator is handed back trainable, as it came.
    assert all(parameter.requires_grad for parameter in generator.parameters())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "module:function"),
        ("dimalign_missing_module_xyz:build", "not found"),
        ("dimalign.interpret.generators:missing_function", "no callable"),
        ("builtins:dict", "must return a torch.nn.Module"),
    ],
)
def test_load_generator_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        load_generator(spec)


def test_maximize_dimension_out_of_range(predictor):
    with pytest.raises(ValueError, match="predicts 5 dimensions"):
        maximize_dimension(predictor, 5, steps=1, n_init=1, n_images=1, image_size=8)


def test_maximize_more_images_than_starts(predictor):
    with pytest.raises(ValueError, match="n_images"):
        maximize_dimension(predictor, 0, n_init=2, n_images=3, image_size=8)


def test_fourier_generator_range_and_shape():
    generator = FourierGenerator((12, 10))
    latent = 3.0 * generator.sample_latent(4, torch.Generator().manual_seed(0))

    images = generator(latent)

    assert images.shape == (4, 3, 12, 10)
    assert float(images.min()) > 0.0
    assert float(images.max()) < 1.0


def test_fourier_generator_zero_latent_is_gray():
    generator = FourierGenerator(8)

    images = generator(torch.zeros(1, generator.latent_dim))

    torch.testing.assert_close(images, torch.full((1, 3, 8, 8), 0.5))


def test_augment_identity_parameters():
    images = torch.rand(2, 3, 8, 8)

    same = augment(images, torch.Generator().manual_seed(0), max_shift=0.0, scale_range=(1.0, 1.0))

    torch.testing.assert_close(same, images, atol=1e-6, rtol=0)


def test_total_variation_of_stripes():
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., :, 1::2] = 1.0

    # Vertical neighbours are equal; every horizontal pair differs by 1.
    assert total_variation(stripes).item() == pytest.approx(1.0)


def test_generator_that_raises_is_named(tmp_path, monkeypatch):
    import sys

    from dimalign.interpret.generators import load_generator

    (tmp_path / "broken_generator.py").write_text("def build():\n    raise RuntimeError('no weights here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"generator broken_generator:build failed .*RuntimeError: no weights here"):
        load_generator("broken_generator:build")
    sys.modules.pop("broken_generator", None)


class ShiftedGenerator(torch.nn.Module):
    """A generator whose images are ``scale * sigmoid(latent) + offset``, 3 x 8 x 8."""

    latent_dim = 3 * 8 * 8

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.sigmoid(latent.view(-1, 3, 8, 8)) + self.offset


@pytest.mark.parametrize(
    ("scale", "offset", "message"),
    [(2.0, -1.0, r"values in \[-0.\d+, 0.\d+\], but they must be in \[0, 1\]"), (float("nan"), 0.0, "NaN or inf")],
)
def test_maximize_rejects_images_outside_unit_range(predictor, scale, offset, message):
    with pytest.raises(ValueError, match=message):
        maximize_dimension(predictor, 0, generator=ShiftedGenerator(scale, offset), steps=1, n_init=2, n_images=1)


class SaturatedGenerator(ShiftedGenerator):
    """A generator whose pixels sit at 0 or 1, overshot by ``offset`` as resampling may do."""

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.sigmoid(100.0 * latent.view(-1, 3, 8, 8)) + self.offset


def test_maximize_accepts_rounding_overshoot(predictor):
    # The pixels lie in [-1e-6, 1 + 1e-6], within the predictor's tolerance of 1e-3.
    generator = SaturatedGenerator(1.0 + 2e-6, -1e-6)

    result = maximize_dimension(predictor, 0, generator=generator, steps=1, n_init=2, n_images=1,
                                random_state=0)

    assert result.images.shape == (1, 3, 8, 8)
    assert float(result.images.max()) > 1.0


def test_maximize_divergence_is_an_error(predictor):
    with pytest.raises(ValueError, match="diverged at step 1"):
        maximize_dimension(predictor, 0, steps=3, n_init=2, n_images=1, image_size=8, alpha=1e308, beta=1e308)


class UnboundedGenerator(torch.nn.Module):
    """A generator whose gray images ``0.5 + 0.01 * sum(latent)`` start in [0, 1] but have no bound."""

    latent_dim = 4

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return (0.5 + 0.01 * latent.sum(dim=1))[:, None, None, None].expand(-1, 3, 8, 8)


def test_maximize_generator_leaving_unit_range_is_named(predictor):
    # Dimension 0 of the tiny map grows with the gray level, so the optimisation
    # drives the image above 1 within a few steps of size 1.
    with pytest.raises(ValueError) as error:
        maximize_dimension(predictor, 0, generator=UnboundedGenerator(), steps=200, n_init=2, n_images=1,
                           learning_rate=1.0)

    message = str(error.value)
    assert "the generator returned images with values in [1.0" in message
    assert "at step " in message
    assert "8-bit" not in message


def test_maximize_rejects_size_with_generator(predictor):
    with pytest.raises(ValueError, match="image_size=32 sets the size of the built-in generator"):
        maximize_dimension(predictor, 0, generator=FourierGenerator(16), steps=0, n_init=1, n_images=1,
                           image_size=32)


def test_maximize_rejects_oversized_starting_latents(predictor, monkeypatch):
    import dimalign.interpret.maximize as maximize_module

    # 4 latents of the 16-pixel Fourier generator take 4 * 3 * 16 * 9 * 2 * 4 = 13,824 bytes.
    monkeypatch.setattr(maximize_module, "MAX_LATENT_BYTES", 10_000)

    with pytest.raises(ValueError) as error:
        maximize_dimension(predictor, 0, steps=0, n_init=4, n_images=1, image_size=16)

    assert str(error.value).startswith(
        "4 starting latents of 864 values need 13,824 bytes, more than the limit of 10,000"
    )


class GrayGenerator(torch.nn.Module):
    """A generator of one-channel images, which the predictor cannot take."""

    latent_dim = 64

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(latent.view(-1, 1, 8, 8))


def test_maximize_names_generator_image_shape(predictor):
    with pytest.raises(ValueError) as error:
        maximize_dimension(predictor, 0, generator=GrayGenerator(), steps=1, n_init=2, n_images=1)

    assert str(error.value).startswith(
        "the generator returned images of shape (2, 1, 8, 8), but they must have shape (batch, 3, H, W)"
    )


def test_specificity_ignores_negative_predictions():
    """A dimension predicted below 0 is absent from the non-negative embedding, as one predicted at 0."""
    from dimalign.interpret.maximize import dimension_objective

    negative = torch.tensor([[2.0, -5.0, -5.0]], dtype=torch.float64)
    zero = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
    expected = -0.5 * 2.0 - 3.0 * (2.0 - np.log(np.exp(2.0) + 2.0))

    assert dimension_objective(negative, 0, alpha=0.5, beta=3.0).item() == pytest.approx(expected, abs=1e-12)
    assert dimension_objective(zero, 0, alpha=0.5, beta=3.0).item() == pytest.approx(expected, abs=1e-12)


def test_size_term_keeps_negative_target():
    """The target dimension's own value still counts below 0, so the loss keeps pushing it up."""
    from dimalign.interpret.maximize import dimension_objective

    prediction = torch.tensor([[-1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    loss = dimension_objective(prediction, 0, alpha=1.0, beta=1.0)
    loss.sum().backward()

    assert loss.item() == pytest.approx(1.0 - (0.0 - np.log(1.0 + np.exp(0.5))), abs=1e-12)
    assert prediction.grad[0, 0].item() == pytest.approx(-1.0, abs=1e-12)


def test_oversized_latents_of_own_generator(predictor, monkeypatch):
    import dimalign.interpret.maximize as maximize_module

    # 4 latents of GrayGenerator's 64 values take 1,024 bytes.
    monkeypatch.setattr(maximize_module, "MAX_LATENT_BYTES", 1_000)

    with pytest.raises(ValueError) as error:
        maximize_dimension(predictor, 0, generator=GrayGenerator(), steps=0, n_init=4, n_images=1)

    assert str(error.value).endswith(
        "lower n_init (CLI: --n-init) or the generator's latent_dim, because --image-size sets only "
        "the built-in generator's size"
    )


class MixedStateGenerator(torch.nn.Module):
    """A generator whose submodules differ in train/eval mode and requires_grad flags."""

    latent_dim = 4

    def __init__(self, fail_at_call: int | None = None):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3 * 8 * 8)
        self.norm = torch.nn.BatchNorm1d(3 * 8 * 8)
        self.calls = 0
        self.fail_at_call = fail_at_call

    def forward(self, latent):
        self.calls += 1
        images = torch.sigmoid(self.norm(self.linear(latent))).view(-1, 3, 8, 8)
        # Values outside [0, 1] make maximize_dimension raise at that call.
        return images + 2.0 if self.calls == self.fail_at_call else images


def generator_state(generator: torch.nn.Module) -> dict:
    return {
        "requires_grad": {name: parameter.requires_grad for name, parameter in generator.named_parameters()},
        "training": {name: module.training for name, module in generator.named_modules()},
        "devices": {name: tensor.device for name, tensor in generator.state_dict().items()},
        "storage": {name: tensor.data_ptr() for name, tensor in generator.state_dict().items()},
    }


@pytest.mark.parametrize("fail_at_call", [None, 4])
def test_maximize_restores_caller_generator(predictor, fail_at_call):
    generator = MixedStateGenerator(fail_at_call)
    generator.train()
    generator.norm.eval()
    generator.linear.bias.requires_grad_(False)
    before = generator_state(generator)
    assert before["requires_grad"] == {"linear.weight": True, "linear.bias": False, "norm.weight": True,
                                       "norm.bias": True}
    assert before["training"] == {"": True, "linear": True, "norm": False}

    if fail_at_call is None:
        maximize_dimension(predictor, 0, generator=generator, steps=3, n_init=2, n_images=1)
    else:
        with pytest.raises(ValueError, match="at step 2 of the optimisation"):
            maximize_dimension(predictor, 0, generator=generator, steps=3, n_init=2, n_images=1)

    after = generator_state(generator)
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["devices"] == before["devices"]
    assert after["storage"] == before["storage"]


def test_maximize_restores_replaced_parameters(predictor):
    """With this torch option, nn.Module.to puts new Parameter objects into the module."""
    generator = MixedStateGenerator()
    parameters = dict(generator.named_parameters())
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        maximize_dimension(predictor, 0, generator=generator, steps=2, n_init=2, n_images=1)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)

    for name, parameter in generator.named_parameters():
        assert parameter is parameters[name], name
        assert parameter.requires_grad, name
