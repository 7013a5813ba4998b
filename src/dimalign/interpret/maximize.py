"""Activation maximisation: images that drive one embedding dimension up.

Only the generator's latent code is optimised (Adam); the generator and the
predictor stay fixed. Per image the loss is::

    loss = -alpha * y_j - beta * log_softmax(relu(y))_j + tv_weight * TV(image)

where ``y`` is the predicted embedding of the augmented image. The first
term asks for a large value of dimension ``j`` (size), the second for
dimension ``j`` to stand out against the other dimensions (specificity),
and the total variation ``TV`` keeps the image smooth. Each image starts
from one of the best of ``n_init`` random latents.

The ridge map can predict values below 0, but the embedding is non-negative
(VICE and SPoSE use it after ReLU). The specificity term therefore takes the
ReLU of the prediction, so that pushing other dimensions below 0 does not
make ``j`` look more specific. The size term keeps the raw value, so a
dimension predicted below 0 is still pushed up.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dimalign._checks import check_integer
from dimalign._progress import progress_disabled
from dimalign.interpret.generators import FourierGenerator, augment, sample_latent, total_variation
from dimalign.interpret.gradcam import check_dimension
from dimalign.interpret.predictor import RANGE_TOLERANCE, DimensionPredictor

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224

# The n_init starting latents are drawn at once, as float32. The limit turns
# a typing error such as n_init=1000 with 2240-pixel images (60 GB of
# Fourier latents) into an error instead of a process that the operating
# system kills. Raise it for a machine with more memory.
MAX_LATENT_BYTES = 4 * 2**30


@dataclass
class MaximizationResult:
    """Images that maximise one dimension, with the dimension before and after.

    Attributes:
        dim (int): The maximised dimension (0-based).
        images (torch.Tensor): Final images, CPU float32 ``(n_images, 3, H, W)`` in ``[0, 1]``.
        before (np.ndarray): Dimension ``dim`` of each starting image, ``(n_images,)``.
        after (np.ndarray): Dimension ``dim`` of each final image, ``(n_images,)``.
        embedding_before (np.ndarray): All predicted dimensions of the starting
            images, ``(n_images, n_dims)``.
        embedding_after (np.ndarray): All predicted dimensions of the final
            images, ``(n_images, n_dims)``.
        loss_history (list[float]): Mean loss per step.
    """

    dim: int
    images: torch.Tensor
    before: np.ndarray
    after: np.ndarray
    embedding_before: np.ndarray
    embedding_after: np.ndarray
    loss_history: list[float] = field(default_factory=list)


def dimension_objective(prediction: torch.Tensor, dim: int, alpha: float, beta: float) -> torch.Tensor:
    """Compute the size and specificity part of the maximisation loss, per image.

    Args:
        prediction (torch.Tensor): Predicted embedding, shape ``(n_images, n_dims)``.
        dim (int): The dimension to maximise.
        alpha (float): Weight of the dimension's raw predicted value.
        beta (float): Weight of its log-softmax over the ReLU of all dimensions.

    Returns:
        torch.Tensor: ``-alpha * y_j - beta * log_softmax(relu(y))_j``, shape ``(n_images,)``.
    """
    size_term = prediction[:, dim]
    specificity_term = torch.log_softmax(torch.relu(prediction), dim=1)[:, dim]
    return -alpha * size_term - beta * specificity_term


def maximize_dimension(
    predictor: DimensionPredictor,
    dim: int,
    *,
    generator: nn.Module | None = None,
    steps: int = 50,
    n_init: int = 16,
    n_images: int = 4,
    alpha: float = 1.0,
    beta: float = 1.0,
    tv_weight: float = 0.1,
    learning_rate: float = 0.05,
    image_size: int | None = None,
    use_augmentation: bool = True,
    batch_size: int = 16,
    random_state: int = 0,
) -> MaximizationResult:
    """Optimise latent codes so that the generated images maximise dimension ``dim``.

    Args:
        predictor (DimensionPredictor): Image -> embedding chain.
        dim (int): 0-based dimension to maximise.
        generator (nn.Module | None): Latent -> image module with a
            ``latent_dim`` attribute (see :mod:`dimalign.interpret.generators`);
            None uses :class:`FourierGenerator`. It is frozen, moved to the
            predictor's device and set to eval mode while the function
            runs. Its ``requires_grad`` flags, train/eval modes and devices
            are restored before the function returns or raises.
        steps (int): Adam steps.
        n_init (int): Random latents drawn at the start; the ``n_images`` with
            the highest value of ``dim`` are optimised.
        n_images (int): Images to return; at most ``n_init``.
        alpha (float): Weight of the dimension's value.
        beta (float): Weight of its log-softmax over the ReLU of all dimensions.
        tv_weight (float): Weight of the total variation of the image.
        learning_rate (float): Adam step size.
        image_size (int | None): Side of the built-in generator's images;
            default the predictor's input size, else 224. Must be None when
            ``generator`` is given.
        use_augmentation (bool): Randomly shift and scale the images at each
            step before the predictor sees them.
        batch_size (int): Latents per forward pass when ranking the random starts.
        random_state (int): Seeds the starting latents and the augmentations.

    Returns:
        MaximizationResult: The images and the dimension's values.

    Raises:
        ValueError: If ``dim`` is out of range, the counts are invalid,
            ``random_state`` is not an integer of at least 0,
            ``image_size`` comes with a ``generator``, the starting latents
            would take more than :data:`MAX_LATENT_BYTES`, the
            generator's images are not finite values in ``[0, 1]``, or the
            loss becomes NaN or inf (the optimisation diverged).
    """
    dim = check_dimension(dim, predictor.n_dims)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    check_integer("random_state", random_state, 0)
    if not 1 <= n_images <= n_init:
        raise ValueError(f"n_images must be between 1 and n_init={n_init}, got {n_images}")
    if generator is not None and image_size is not None:
        raise ValueError(
            f"image_size={image_size} sets the size of the built-in generator's images, but a generator "
            "was given, which sets its own size; leave image_size out"
        )
    # The image size sets the latent size of the built-in generator only.
    remedy = "lower n_init (CLI: --n-init) or the image size (CLI: --image-size)"
    if generator is None:
        size = image_size or (predictor.input_size[0] if predictor.input_size else DEFAULT_IMAGE_SIZE)
        generator = FourierGenerator(size)
    else:
        remedy = (
            "lower n_init (CLI: --n-init) or the generator's latent_dim, because --image-size sets only "
            "the built-in generator's size"
        )
    latent_bytes = n_init * int(generator.latent_dim) * 4
    if latent_bytes > MAX_LATENT_BYTES:
        raise ValueError(
            f"{n_init} starting latents of {int(generator.latent_dim)} values need {latent_bytes:,} bytes, "
            f"more than the limit of {MAX_LATENT_BYTES:,} (dimalign.interpret.maximize.MAX_LATENT_BYTES); "
            f"{remedy}"
        )
    with _frozen_on(generator, predictor.device):
        random = torch.Generator().manual_seed(int(random_state))

        # Start from the n_images best of n_init random latents.
        candidates = sample_latent(generator, n_init, random).to(predictor.device)
        with torch.no_grad():
            values = torch.cat([
                predictor(_check_generated(generator(chunk)))[:, dim].float()
                for chunk in candidates.split(batch_size)
            ])
        best = torch.argsort(values, descending=True)[:n_images]
        latent = candidates[best].clone().requires_grad_(True)
        with torch.no_grad():
            embedding_before = predictor(generator(latent)).float().cpu().numpy()

        optimizer = torch.optim.Adam([latent], lr=learning_rate)
        loss_history = []
        for _ in tqdm(range(steps), desc=f"maximise dimension {dim}", disable=progress_disabled(), leave=False):
            optimizer.zero_grad()
            # A generator without a bounded output can leave [0, 1] as its latent moves.
            images = _check_generated(generator(latent), step=len(loss_history) + 1)
            seen = augment(images, random) if use_augmentation else images
            prediction = predictor(seen).float()
            loss = dimension_objective(prediction, dim, alpha, beta) + tv_weight * total_variation(images.float())
            if not torch.isfinite(loss).all():
                raise ValueError(
                    f"maximisation of dimension {dim} diverged at step {len(loss_history) + 1}: the loss is "
                    f"{float(loss.detach().mean())}; lower the learning rate ({learning_rate:g}), alpha "
                    f"({alpha:g}) or beta ({beta:g})"
                )
            loss.sum().backward()
            optimizer.step()
            loss_history.append(float(loss.detach().mean()))

        with torch.no_grad():
            final_images = _check_generated(generator(latent), step=steps).float()
            embedding_after = predictor(final_images).float().cpu().numpy()
        result = MaximizationResult(
            dim=dim,
            images=final_images.cpu(),
            before=embedding_before[:, dim].copy(),
            after=embedding_after[:, dim].copy(),
            embedding_before=embedding_before,
            embedding_after=embedding_after,
            loss_history=loss_history,
        )
    if not np.isfinite(embedding_after).all():
        raise ValueError(
            f"maximisation of dimension {dim} diverged in the last step: the predicted embedding is "
            f"NaN or inf; lower the learning rate ({learning_rate:g})"
        )
    for index, (start, end) in enumerate(zip(result.before, result.after)):
        logger.info("dimension %d, image %d: %.4f -> %.4f after %d steps", dim, index, start, end, steps)
    return result


@contextlib.contextmanager
def _frozen_on(generator: nn.Module, device: torch.device) -> Iterator[None]:
    """Freeze ``generator``, move it to ``device`` and set eval mode inside the block.

    The caller's module is changed in place, because ``nn.Module.to`` moves
    its tensors. When the block ends, also by an exception, every
    ``requires_grad`` flag, every submodule's training mode and every
    parameter and buffer tensor are set back as they were. Only the latent
    code is optimised, so the original tensors still hold the same values.
    """
    requires_grad = [(parameter, parameter.requires_grad) for parameter in generator.parameters()]
    training = [(module, module.training) for module in generator.modules()]
    parameter_data = [(parameter, parameter.data) for parameter in generator.parameters()]
    # nn.Module.to replaces buffers, and also parameters under
    # torch.__future__.set_overwrite_module_params_on_conversion(True), so the
    # original objects are put back into their modules.
    tensors = [
        (module.__dict__[kind], name, tensor)
        for module in generator.modules()
        for kind in ("_parameters", "_buffers")
        for name, tensor in module.__dict__[kind].items()
        if tensor is not None
    ]
    for parameter in generator.parameters():
        parameter.requires_grad_(False)
    generator.to(device).eval()
    try:
        yield
    finally:
        for parameter, data in parameter_data:
            parameter.data = data
        for registry, name, tensor in tensors:
            registry[name] = tensor
        for module, mode in training:
            module.training = mode
        for parameter, flag in requires_grad:
            parameter.requires_grad_(flag)


def _check_generated(images: torch.Tensor, step: int | None = None) -> torch.Tensor:
    """Return the generator's images if they are finite and within ``[0, 1]`` (up to :data:`RANGE_TOLERANCE`).

    The predictor normalises as for photos in ``[0, 1]``. Images in another
    range, such as ``[-1, 1]`` from a GAN with a tanh output, would give
    predictions for inputs the map never saw, without any error.

    Args:
        images (torch.Tensor): The generator's output ``(B, 3, H, W)``.
        step (int | None): The optimisation step that produced them, named in
            the error; None for the random starts.

    Raises:
        ValueError: Naming the shape or range found and the step.
    """
    when = "" if step is None else f" at step {step} of the optimisation"
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        if isinstance(images, torch.Tensor):
            found = f"images of shape {tuple(images.shape)}"
        else:
            found = f"a {type(images).__name__}"
        raise ValueError(
            f"the generator returned {found}{when}, but they must have shape (batch, 3, H, W): "
            "RGB images, for example with a gray channel repeated three times"
        )
    if not torch.isfinite(images).all():
        raise ValueError(
            f"the generator returned images with NaN or inf values{when}; it must return finite values in [0, 1]"
        )
    # The predictor's own tolerance, so that a generator whose resampling
    # overshoots [0, 1] by a rounding error passes here as in every step.
    low, high = (float(value) for value in torch.aminmax(images.detach()))
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(
            f"the generator returned images with values in [{low:.3g}, {high:.3g}]{when}, but they must be "
            "in [0, 1]; bound its output, for example with a sigmoid, or (x + 1) / 2 for a tanh "
            "output in [-1, 1]"
        )
    return images
