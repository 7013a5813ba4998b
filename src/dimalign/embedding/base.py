"""The training loop shared by VICE and SPoSE.

One epoch uses every training triplet exactly once, in an order drawn from a
seeded ``torch.Generator`` (the last, smaller batch included). The same
generator draws the Monte Carlo noise of VICE, and its state is saved in the
checkpoint, so a run resumed from a checkpoint continues exactly as an
uninterrupted run would. Evaluation draws from a separate generator that is
created anew for every evaluation, so evaluating never changes training.
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from sklearn.base import BaseEstimator
from tqdm.auto import tqdm

from dimalign._checks import check_integer
from dimalign._progress import progress_disabled
from dimalign._warnings import warn
from dimalign.device import available_memory, resolve_device
from dimalign.embedding.checkpoint import checkpoint_lock, load_checkpoint, save_checkpoint
from dimalign.embedding.likelihood import accuracy_with_ties, hits_with_ties
from dimalign.embedding.run_files import (
    CONFIG_NAME,
    HISTORY_NAME,
    SavedFit,
    check_arrays,
    history_to_csv,
    read_saved_fit,
    reject_recorded_folder,
    toml_setting,
    warn_edited_run,
    warn_moved_checkpoint,
)
from dimalign.io.files import count_of, staged_outputs, write_text_atomic
from dimalign.io.runs import EmbeddingResult, save_embedding
from dimalign.io.triplets import validate_triplets
from dimalign.memory import format_bytes

logger = logging.getLogger(__name__)

# Settings that may differ between a checkpoint and the run that resumes it:
# they change how long or how verbosely a run goes on, not what it computes.
_RESUMABLE_SETTINGS = frozenset(
    {"max_epochs", "stability_epochs", "checkpoint_every", "checkpoint_dir", "resume",
     "device", "verbose", "tensorboard", "eval_every",
     # n_objects may come from the constructor or from fit. The checkpoint's
     # object count is compared with the data separately.
     "n_objects"}
)

# Settings that `dimalign fit` and `dimalign sweep` take as options, so that a
# resume error names the option a command-line user changed.
_COMMAND_LINE_OPTIONS = {
    "random_state": "--seed",
    **{key: "--" + key.replace("_", "-")
       for key in ("n_dims", "batch_size", "lr", "beta", "prior", "pi", "spike", "slab",
                   "mc_samples", "l1", "min_objects")},
}

#: Folder of the TensorBoard event files in the run directory.
TENSORBOARD_DIR_NAME = "tensorboard"

#: Upper bound of ``max_epochs``.
MAX_EPOCHS = 10**9

#: A fit or a comparison warns about an embedding with more than this many
#: dimensions per object, because such dimensions are poorly determined and
#: matching them finds high correlations by chance (docs/compare.md). With as
#: many dimensions as objects the dimensions are linearly dependent.
MAX_DIMENSIONS_PER_OBJECT = 0.5



def as_triplet_tensor(triplets: Any, n_objects: int, name: str, source: str | None = None) -> torch.Tensor:
    """Check a triplet array against ``n_objects`` and return it as int64 tensor.

    Non-emptiness is checked here. Integer values (floats only when whole),
    shape, index range and three distinct objects per row are checked by
    :func:`dimalign.io.triplets.validate_triplets`.

    Args:
        triplets (array-like): Shape ``(n, 3)``.
        n_objects (int): Number of objects.
        name (str): Role of the triplets, such as ``"training"``.
        source (str | None): How errors name the triplets; None uses
            ``"<name> triplets"``.

    Returns:
        torch.Tensor: The triplets as int64, shape ``(n, 3)``, on the CPU.

    Raises:
        ValueError: On a wrong shape, an empty or non-integer array, an index
            out of range or a row that repeats an object.
    """
    source = source if source is not None else f"{name} triplets"
    array = validate_triplets(triplets, n_objects, source=source)
    if array.shape[0] == 0:
        # split_triplets with val_fraction=0 returns an empty validation part.
        advice = ": pass val=None to fit without validation triplets" if name == "validation" else ""
        raise ValueError(f"{source} are empty{advice}")
    if not array.flags.writeable:
        # A read-only memory map: torch would share it and warn.
        array = array.copy()
    return torch.as_tensor(array)


def triplet_digest(triplets: torch.Tensor) -> str:
    """Return a SHA-256 of the triplet array, to tie a checkpoint to its data.

    Args:
        triplets (torch.Tensor): Shape ``(n, 3)``, on any device.

    Returns:
        str: The hex digest of the triplets as C-ordered int64 bytes.
    """
    return hashlib.sha256(triplets.cpu().numpy().astype(np.int64).tobytes()).hexdigest()


def check_real(
    name: str, value: Any, low: float | None = None, high: float | None = None,
    *, low_open: bool = False, high_open: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number in the interval.

    sklearn's ``check_scalar`` lets NaN through and raises ``TypeError`` for
    strings, so settings are checked here instead.

    Args:
        name (str): Setting name for the message.
        value (Any): The value to check.
        low (float | None): Lower bound, or None for none.
        high (float | None): Upper bound, or None for none.
        low_open (bool): Exclude ``low`` itself.
        high_open (bool): Exclude ``high`` itself.

    Raises:
        ValueError: Naming the setting, the value and the allowed interval.

    Example:
        >>> check_real("pi", 0.5, 0, 1, low_open=True, high_open=True)
    """
    lower = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
    upper = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
    interval = f"{lower}, {upper}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    too_low = low is not None and (value < low or (low_open and value == low))
    too_high = high is not None and (value > high or (high_open and value == high))
    if too_low or too_high:
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def estimate_fit_memory(n_objects: int, n_dims: int, n_tensors: int, dtype: torch.dtype) -> int:
    """Estimate a lower bound on the memory of a fit's parameters and optimizer state, in bytes.

    Each parameter tensor of shape ``(n_objects, n_dims)`` is held 4 times
    during training: its values, its gradient and Adam's two moment estimates
    (``exp_avg``, ``exp_avg_sq``). The per-batch tensors (VICE's noise and
    sample, the similarities) come on top, so the real peak is higher.

    Args:
        n_objects (int): Rows of each parameter tensor.
        n_dims (int): Columns of each parameter tensor.
        n_tensors (int): Parameter tensors of the model (VICE 2, SPoSE 1).
        dtype (torch.dtype): Type of the parameters.

    Returns:
        int: Bytes.

    Example:
        >>> estimate_fit_memory(1854, 100, 2, torch.float32)
        5932800
    """
    item_size = torch.empty((), dtype=dtype).element_size()
    return 4 * n_tensors * n_objects * n_dims * item_size


def _setting_name(key: str) -> str:
    option = _COMMAND_LINE_OPTIONS.get(key)
    return key if option is None else f"{key} ({option})"


@dataclass
class _FitState:
    """The state of one call of ``fit`` that its steps share and a checkpoint saves."""

    params: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    directory: Path | None  # checkpoint_dir, or None for a fit without checkpoints
    n_objects: int
    data_digest: str
    val_digest: str | None
    history: list[dict[str, float]] = field(default_factory=list)
    epoch: int = 0  # epochs trained so far
    stable_epochs: int = 0  # epochs since the number of kept dimensions last changed
    last_n_kept: int = -1


class TripletEmbedding(BaseEstimator):
    """Base class: a non-negative embedding fitted to odd-one-out triplets.

    Subclasses define the parameters, the loss of a batch, the kept
    dimensions, the predicted choice probabilities and the fitted attributes.
    """

    _estimator_name = "embedding"
    # Tensors of shape (n_objects, n_dims) that _init_parameters returns.
    _n_parameter_tensors = 1

    # ---- hooks for subclasses -------------------------------------------------

    def _init_parameters(self, n_objects: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _batch_loss(
        self, params: dict[str, torch.Tensor], batch: torch.Tensor, n_train: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def _after_step(self, params: dict[str, torch.Tensor]) -> None:
        """Apply constraints after an optimiser step (SPoSE clamps to >= 0)."""

    def _kept(self, params: dict[str, torch.Tensor]) -> np.ndarray:
        raise NotImplementedError

    def _predict_log_proba(
        self, params: dict[str, torch.Tensor], kept: torch.Tensor, triplets: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def _result(self) -> EmbeddingResult:
        raise NotImplementedError

    # Arrays of embedding.npz that load requires.
    _saved_arrays: tuple[str, ...] = ("embedding", "kept_dims")

    def _set_loaded(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the fitted arrays of this estimator from a saved ``embedding.npz``."""
        raise NotImplementedError

    def _saved_parameters(self, saved: SavedFit) -> dict[str, np.ndarray] | None:
        """Return the parameters that prediction uses, exactly as the fit had them.

        None means that the folder lacks them. The loaded estimator then
        raises :meth:`_missing_parameters_message` from its prediction methods.

        Raises:
            ValueError: If the parameters contradict the other arrays or the
                settings, naming ``embedding.npz``.
        """
        raise NotImplementedError

    # ---- fitting --------------------------------------------------------------

    def _dtype(self) -> torch.dtype:
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        return torch.float32 if self.dtype == "float32" else torch.float64

    def _check_settings(self) -> None:
        minimums = {
            "n_dims": 1, "batch_size": 1, "max_epochs": 1, "stability_epochs": 1,
            "eval_every": 1, "checkpoint_every": 1, "min_objects": 0,
        }
        for name, minimum in minimums.items():
            check_integer(name, getattr(self, name), minimum)
        # A bound far beyond any real fit, below what range() and tqdm accept.
        check_integer("max_epochs", self.max_epochs, 1, MAX_EPOCHS)
        if self.n_objects is not None:
            check_integer("n_objects", self.n_objects, 1)
        if isinstance(self.random_state, bool) or not isinstance(self.random_state, numbers.Integral):
            raise ValueError(
                f"random_state must be an integer seed, got {self.random_state!r}: a fit is "
                "reproducible and resumable only from a fixed seed"
            )
        # torch.Generator.manual_seed takes seeds that fit in 64 bits.
        check_integer("random_state", self.random_state, 0, 2**63 - 1)
        check_real("lr", self.lr, 0, low_open=True)
        for name in ("verbose", "resume", "tensorboard"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, os.PathLike)):
            raise ValueError(f"checkpoint_dir must be a folder path or None, got {self.checkpoint_dir!r}")

    def _check_memory(self, n_objects: int, device: torch.device, dtype: torch.dtype) -> None:
        """Raise ``ValueError`` before allocating parameters that cannot fit into memory.

        Without this check a fit with a huge ``n_dims`` on the CPU is ended
        by the kernel's OOM killer, without an error message.
        """
        required = estimate_fit_memory(n_objects, self.n_dims, self._n_parameter_tensors, dtype)
        available = available_memory(device)
        if available is None or required <= available:
            return
        one_dimension = estimate_fit_memory(n_objects, 1, self._n_parameter_tensors, dtype)
        if one_dimension > available:
            # No n_dims helps, so the object count is the likely mistake.
            advice = (
                f"even 1 dimension needs at least {format_bytes(one_dimension)}, so check the "
                f"number of objects, {n_objects} (CLI: --n-objects or --objects)"
            )
        else:
            advice = "use a smaller n_dims (CLI: --n-dims)"
        raise ValueError(
            f"n_dims={self.n_dims} needs at least {format_bytes(required)} on {device} for the "
            f"{self._n_parameter_tensors} parameter tensor(s) of {n_objects} objects x {self.n_dims} "
            f"dimensions in {str(dtype).removeprefix('torch.')}, their gradients and Adam's two "
            f"moment estimates, but {format_bytes(available)} of memory is available: {advice}"
        )

    def _training_config(self) -> dict[str, Any]:
        # numpy scalars, which a grid such as numpy.logspace sets, become Python
        # numbers, because torch.load(weights_only=True) cannot read them back.
        return {
            key: value.item() if isinstance(value, np.generic) else value
            for key, value in self.get_params().items()
            if key not in _RESUMABLE_SETTINGS
        }

    def fit(self, train: Any, val: Any = None, *, n_objects: int | None = None) -> TripletEmbedding:
        """Fit the embedding to training triplets.

        Args:
            train (array-like): Training triplets, shape ``(n_train, 3)``, 0-based,
                odd one out in the last column. Integer arrays, whole floats,
                lists, DataFrames and tensors are accepted.
            val (array-like | None): Validation triplets; when given, held-out
                accuracy and NLL are recorded after each evaluation. It takes
                the place of scikit-learn's ``y``, so ``cross_val_score`` and
                ``GridSearchCV`` called without ``y`` pass None here.
            n_objects (int | None): Number of objects. Overrides the
                ``n_objects`` setting; one of the two is required, because the
                largest index in the triplets may miss objects never sampled.

        Returns:
            TripletEmbedding: self, fitted.

        Raises:
            ValueError: On invalid triplets or settings, when the parameters
                would not fit into memory, or when a checkpoint in
                ``checkpoint_dir`` belongs to other settings or data.
            FileExistsError: When ``checkpoint_dir`` has a checkpoint and
                ``resume`` is False.
            RuntimeError: When another fit is running with the same
                ``checkpoint_dir``, when the fit diverges (the loss or a
                parameter is no longer finite), or with ``tensorboard=True``
                without the tensorboard package.
        """
        self._check_settings()
        self._clear_fitted()
        n_objects = self._fit_object_count(n_objects)
        device = resolve_device(self.device)
        if self.min_objects >= n_objects:
            raise ValueError(
                f"min_objects is {self.min_objects}, but there are only {n_objects} objects, so no "
                f"dimension could be kept: use at most {n_objects - 1} (CLI: --min-objects)"
            )
        dtype = self._dtype()
        if val is not None and np.ndim(val) == 1:
            raise ValueError(
                f"val has shape {np.shape(val)}, but it takes validation triplets of shape (n, 3). "
                "scikit-learn passes y there, but the odd one out is the last column of each triplet: "
                "call cross_val_score or GridSearchCV without y"
            )
        self._check_memory(n_objects, device, dtype)
        train_t = as_triplet_tensor(train, n_objects, "training").to(device)
        val_t = as_triplet_tensor(val, n_objects, "validation").to(device) if val is not None else None
        self._n_train = train_t.shape[0]

        # Autograd records nothing inside torch.no_grad() or torch.inference_mode(),
        # so a fit called in such a block switches both off until it returns.
        # Only one fit at a time may read and write the checkpoint in checkpoint_dir.
        with torch.inference_mode(False), torch.enable_grad(), checkpoint_lock(self.checkpoint_dir or None):
            state = self._start_fit(n_objects, device, dtype, train_t, val_t)
            self._resume_from_checkpoint(state)
            converged = self._train_epochs(state, train_t, val_t)
            self._store_fit(state, device, converged)
        return self

    def _fit_object_count(self, n_objects: int | None) -> int:
        """Return the number of objects of a fit: the argument of ``fit``, else the setting."""
        n_objects = n_objects if n_objects is not None else self.n_objects
        if n_objects is None:
            raise ValueError(
                "the number of objects is unknown: pass n_objects (the length of the "
                "object table), not the largest index in the triplets"
            )
        check_integer("n_objects", n_objects, 1)
        # A Python int, because torch.load(weights_only=True) rejects a numpy scalar in the checkpoint.
        return int(n_objects)

    def _start_fit(
        self, n_objects: int, device: torch.device, dtype: torch.dtype,
        train_t: torch.Tensor, val_t: torch.Tensor | None,
    ) -> _FitState:
        """Draw the initial parameters and create the optimizer of a new fit."""
        generator = torch.Generator(device=device).manual_seed(int(self.random_state))
        params = self._init_parameters(n_objects, generator)
        params = {name: tensor.to(device=device, dtype=dtype).requires_grad_(True) for name, tensor in params.items()}
        # The fused implementation updates all parameters in one kernel. On the CPU
        # it needs torch 2.4 or newer, the lower bound in pyproject.toml.
        # float(), because the optimizer state goes into the checkpoint, which
        # torch.load(weights_only=True) cannot read with a numpy scalar in it.
        optimizer = torch.optim.Adam(params.values(), lr=float(self.lr), fused=True)
        return _FitState(
            params=params, optimizer=optimizer, generator=generator,
            directory=Path(self.checkpoint_dir) if self.checkpoint_dir else None,
            n_objects=n_objects, data_digest=triplet_digest(train_t),
            val_digest=triplet_digest(val_t) if val_t is not None else None,
        )

    def _resume_from_checkpoint(self, state: _FitState) -> None:
        """Continue ``state`` from the checkpoint in ``checkpoint_dir``, if there is one.

        Raises:
            FileExistsError: If there is a checkpoint and ``resume`` is False.
            ValueError: If the checkpoint belongs to other settings or data,
                or is damaged.
        """
        directory = state.directory
        checkpoint = load_checkpoint(directory) if directory is not None else None
        if checkpoint is None and self.resume:
            # No error: 'dimalign run' passes resume=True to every fit. The log
            # line shows a mistyped run directory, which would pass unnoticed.
            logger.info("no checkpoint in %s to resume from: starting a new fit", directory)
        if checkpoint is None:
            return
        self._check_resumable(checkpoint, directory, state.n_objects, state.data_digest, state.val_digest)
        self._check_parameter_shapes(checkpoint, directory, state.params)
        self._restore(checkpoint, state.params, state.optimizer, state.generator)
        state.history = list(checkpoint["history"])
        state.epoch = int(checkpoint["epoch"])
        state.stable_epochs = int(checkpoint["stable_epochs"])
        state.last_n_kept = int(checkpoint["last_n_kept"])
        logger.info("resuming %s from epoch %d in %s", self._estimator_name, state.epoch, directory)
        if state.epoch >= self.max_epochs:
            warn(
                f"the checkpoint in {directory} has {state.epoch} epochs, not fewer than "
                f"max_epochs={self.max_epochs}: nothing is trained, and the fit is the "
                "checkpoint's; raise max_epochs to train on", UserWarning,
            )
        elif state.stable_epochs >= self.stability_epochs:
            warn(
                f"the checkpoint in {directory} has converged: its kept dimensions did not "
                f"change for {state.stable_epochs} epochs, at least stability_epochs="
                f"{self.stability_epochs}. Nothing is trained, and the fit is the checkpoint's; "
                "raise stability_epochs to train on", UserWarning,
            )

    def _train_epochs(self, state: _FitState, train_t: torch.Tensor, val_t: torch.Tensor | None) -> bool:
        """Train from ``state.epoch`` until convergence or ``max_epochs``, and return whether it converged.

        A checkpoint is written every ``checkpoint_every`` epochs, when the
        fit converges and at the end.
        """
        start_epoch = state.epoch
        writer = self._tensorboard_writer(state.directory, start_epoch)
        converged = state.stable_epochs >= self.stability_epochs and start_epoch > 0
        progress = tqdm(
            range(start_epoch, self.max_epochs), desc=f"fit {self._estimator_name}",
            disable=progress_disabled() if self.verbose else True, unit="epoch",
        )
        for epoch_index in progress:
            if converged:
                break
            state.epoch = epoch_index + 1
            row = self._train_one_epoch(state, train_t, val_t)
            self._log_epoch(row, writer)
            progress.set_postfix(loss=f"{row['loss']:.4f}", dims=row["n_dims"])
            converged = state.stable_epochs >= self.stability_epochs
            if state.directory is not None and (state.epoch % self.checkpoint_every == 0 or converged):
                self._checkpoint(state)
        progress.close()
        if state.directory is not None:
            self._checkpoint(state)
        if writer is not None:
            writer.close()
        return converged

    def _train_one_epoch(
        self, state: _FitState, train_t: torch.Tensor, val_t: torch.Tensor | None
    ) -> dict[str, float]:
        """Train epoch ``state.epoch``, count it towards convergence and return its history row."""
        epoch = state.epoch
        started = time.perf_counter()
        totals = self._train_epoch(state.params, state.optimizer, train_t, state.generator)
        self._check_finite(state.params, totals, epoch)
        kept = self._kept(state.params)
        n_kept = int(kept.size)
        state.stable_epochs = state.stable_epochs + 1 if n_kept == state.last_n_kept else 0
        state.last_n_kept = n_kept
        row = {"epoch": epoch, **totals, "n_dims": n_kept, "seconds": time.perf_counter() - started}
        if val_t is not None and (epoch % self.eval_every == 0 or epoch == self.max_epochs):
            row.update(self._evaluate(state.params, kept, val_t, prefix="val_"))
        state.history.append(row)
        return row

    def _store_fit(self, state: _FitState, device: torch.device, converged: bool) -> None:
        """Set the fitted attributes from a finished fit and log or warn about its outcome."""
        # The fitted attributes are set together here, so an interrupted or
        # failed fit leaves the estimator unfitted instead of half updated.
        params = state.params
        self._params = {name: tensor.detach() for name, tensor in params.items()}
        self._device = device
        self.n_objects_ = state.n_objects
        self.converged_ = converged
        self.history_ = state.history
        self.n_epochs_ = state.epoch
        self._set_fitted(params)
        reason = "converged" if self.converged_ else "reached max_epochs"
        logger.info(
            "pruned %d -> %d dimensions after %s (%s)",
            self.n_dims, self.n_dims_, count_of(state.epoch, "epoch"), reason,
        )
        if self.n_dims_ == 0:
            # min_objects cannot go below 0, so the advice to lower it is given only above 0.
            lower_min_objects = (
                f" lower min_objects (now {self.min_objects}; CLI: --min-objects),"
                if self.min_objects > 0 else ""
            )
            warn(
                "the fit kept no dimension: every object scores the same, and comparisons of this "
                f"embedding will fail. Use more triplets or epochs,{lower_min_objects} or, for SPoSE, "
                "a smaller l1 penalty",
                UserWarning,
            )
        elif self.n_dims_ > MAX_DIMENSIONS_PER_OBJECT * state.n_objects:
            warn(
                f"the fit kept {self.n_dims_} of {self.n_dims} dimensions for {state.n_objects} objects, "
                "so its dimensions are poorly determined, and matching them to another embedding finds "
                "high correlations by chance alone: fit with fewer initial dimensions (n_dims, CLI: "
                f"--n-dims), at most {int(MAX_DIMENSIONS_PER_OBJECT * state.n_objects)} for these objects, "
                "or train longer",
                UserWarning,
            )

    def _clear_fitted(self) -> None:
        """Remove the attributes of an earlier fit, so a new fit starts unfitted."""
        fitted = [name for name in vars(self) if name.endswith("_") and not name.startswith("__")]
        for name in fitted + ["_params", "_params_source", "_device", "_n_train"]:
            self.__dict__.pop(name, None)

    def _check_finite(self, params, totals: dict[str, float], epoch: int) -> None:
        """Raise ``RuntimeError`` when the loss or a parameter is no longer finite (the fit diverged)."""
        if math.isfinite(totals["loss"]) and all(bool(torch.isfinite(value).all()) for value in params.values()):
            return
        raise RuntimeError(
            f"the fit diverged in epoch {epoch}: the loss is {totals['loss']} and parameters are not "
            f"finite; lower the learning rate (lr={self.lr}) and fit again"
        )

    def _train_step(self, params, batch, n_train, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Set the gradients of one batch and return (batch NLL, pair similarities).

        The default differentiates :meth:`_batch_loss` with autograd.
        """
        loss, parts, logits = self._batch_loss(params, batch, n_train, generator)
        for tensor in params.values():
            tensor.grad = None
        loss.backward()
        return parts["nll"], logits.detach()

    @torch.no_grad()
    def _complexity(self, params) -> float:
        """Return the complexity term of the loss at the end of an epoch (0 where there is none)."""
        return 0.0

    def _train_epoch(self, params, optimizer, train_t, generator) -> dict[str, float]:
        n_train = train_t.shape[0]
        order = torch.randperm(n_train, generator=generator, device=train_t.device)
        nll_sum = torch.zeros((), dtype=torch.float64, device=train_t.device)
        hits = torch.zeros((), dtype=torch.float64, device=train_t.device)
        for start in range(0, n_train, self.batch_size):
            batch = train_t[order[start:start + self.batch_size]]
            nll, logits = self._train_step(params, batch, n_train, generator)
            optimizer.step()
            self._after_step(params)
            nll_sum += nll.detach().double() * batch.shape[0]
            hits += hits_with_ties(logits).sum().double()
        nll_mean = float(nll_sum) / n_train
        complexity = self._complexity(params)
        return {
            "loss": nll_mean + self._complexity_weight() * complexity,
            "nll": nll_mean,
            "complexity": complexity,
            "train_accuracy": float(hits) / n_train,
        }

    def _complexity_weight(self) -> float:
        return 1.0

    @torch.no_grad()
    def _evaluate(self, params, kept: np.ndarray, triplets: torch.Tensor, prefix: str = "") -> dict[str, float]:
        kept_t = torch.as_tensor(kept, dtype=torch.int64, device=triplets.device)
        log_proba = self._predict_log_proba(params, kept_t, triplets)
        # Ties are found among the probabilities that predict_proba returns,
        # because exp can round two log-probabilities to one probability.
        # The extra exp costs about 1% of the log-probabilities or less
        # (benchmarks/bench_predict_ties.py).
        accuracy = accuracy_with_ties(log_proba.exp())
        nll = float(-log_proba[:, 0].mean())
        return {f"{prefix}accuracy": accuracy, f"{prefix}nll": nll}

    def _log_epoch(self, row: dict[str, float], writer) -> None:
        # The loss is nll + weight x complexity (beta for VICE, l1 for SPoSE), so the weight is shown.
        weight = self._complexity_weight()
        weighted = "" if weight == 1 else f"{weight:g} x "
        message = (
            f"epoch {row['epoch']}: loss {row['loss']:.4f} (nll {row['nll']:.4f} + {weighted}"
            f"complexity {row['complexity']:.4f}), train accuracy {row['train_accuracy']:.4f}"
        )
        if "val_accuracy" in row:
            message += f", val accuracy {row['val_accuracy']:.4f}, val nll {row['val_nll']:.4f}"
        message += f", {row['n_dims']} dims"
        logger.log(logging.INFO if self.verbose else logging.DEBUG, message)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, row["epoch"])

    def _tensorboard_writer(self, directory: Path | None, start_epoch: int):
        if not self.tensorboard:
            return None
        if directory is None:
            raise ValueError("tensorboard=True needs checkpoint_dir, where the event files go")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ModuleNotFoundError as error:
            raise RuntimeError(
                f"tensorboard=True (--tensorboard) needs the tensorboard package, which is not "
                f"installed ({error}): pip install tensorboard, or fit without it"
            ) from error

        # A run stopped after its last checkpoint has logged epochs that the
        # resumed run computes again. purge_step makes TensorBoard drop the
        # events of earlier files from this epoch on, so each epoch shows once.
        return SummaryWriter(log_dir=str(directory / TENSORBOARD_DIR_NAME), purge_step=start_epoch + 1)

    # ---- checkpoints ----------------------------------------------------------

    def _checkpoint(self, state: _FitState) -> None:
        save_checkpoint(
            {
                "estimator": self._estimator_name,
                "config": self._training_config(),
                "n_objects": state.n_objects,
                "data_sha256": state.data_digest,
                "val_sha256": state.val_digest,
                "epoch": state.epoch,
                "stable_epochs": state.stable_epochs,
                "last_n_kept": state.last_n_kept,
                "params": {name: tensor.detach().cpu() for name, tensor in state.params.items()},
                "optimizer": state.optimizer.state_dict(),
                "generator": state.generator.get_state(),
                "generator_device": state.generator.device.type,
                "history": state.history,
            },
            state.directory,
        )

    def _check_resumable(
        self, state, directory: Path, n_objects: int, data_digest: str, val_digest: str | None
    ) -> None:
        where = directory / "checkpoint.pt"
        if not self.resume:
            other_fit = self._other_fit_difference(state, n_objects, data_digest, val_digest)
            if other_fit is not None:
                raise FileExistsError(
                    f"{where} belongs to another fit ({other_fit}), which this fit would overwrite: "
                    "give each fit its own checkpoint_dir (in GridSearchCV and cross_val_score, which "
                    "fit copies of one estimator, set checkpoint_dir=None), or choose an empty run "
                    "directory"
                )
            raise FileExistsError(
                f"{where} exists: pass resume=True (--resume) to continue that run, "
                "or choose an empty run directory"
            )
        if state["estimator"] != self._estimator_name:
            raise ValueError(
                f"{where} belongs to a {state['estimator']} run, not {self._estimator_name}: resume it "
                f"with --method {state['estimator']} (in Python, with that estimator), or choose "
                "another run directory"
            )
        config = self._training_config()
        differences = {
            key: (state["config"].get(key), value)
            for key, value in config.items()
            if state["config"].get(key) != value
        }
        if differences:
            listed = ", ".join(
                f"{_setting_name(key)}: checkpoint {old!r}, now {new!r}" for key, (old, new) in differences.items()
            )
            raise ValueError(f"{where} was written with other settings ({listed}); resume with the same settings")
        if state["n_objects"] != n_objects:
            raise ValueError(
                f"{where} has {state['n_objects']} objects, this fit has {n_objects}: resume with the "
                "object count the run was fitted with (CLI: --n-objects or --objects), or choose "
                "another run directory"
            )
        if state["data_sha256"] != data_digest:
            raise ValueError(
                f"{where} was trained on other triplets: resume with the same training data. A "
                "validation split made by the fit changes the training triplets too, so also keep "
                "its fraction and seed (CLI: --val-fraction and --split-seed)"
            )
        # Checkpoints written before val_sha256 was recorded lack the key and are not compared.
        if "val_sha256" in state and state["val_sha256"] != val_digest:
            if state["val_sha256"] is None:
                problem = "was fitted without validation triplets, but this fit has some"
            elif val_digest is None:
                problem = "was fitted with validation triplets, but this fit has none"
            else:
                problem = "was validated on other triplets than this fit"
            raise ValueError(
                f"{where} {problem}; resume with the same validation triplets, so that the "
                "held-out accuracy in the history is of one set"
            )

    def _other_fit_difference(
        self, state, n_objects: int, data_digest: str, val_digest: str | None
    ) -> str | None:
        """Describe how the fit of a checkpoint differs from this fit, or return None if it does not."""
        if state["estimator"] != self._estimator_name:
            return f"a {state['estimator']} fit"
        config = self._training_config()
        changed = [_setting_name(key) for key, value in config.items() if state["config"].get(key) != value]
        if changed:
            return "other settings: " + ", ".join(changed)
        if state["n_objects"] != n_objects:
            return f"{state['n_objects']} objects, not {n_objects}"
        if state["data_sha256"] != data_digest:
            return "other training triplets"
        if "val_sha256" in state and state["val_sha256"] != val_digest:
            return "other validation triplets"
        return None

    @staticmethod
    def _check_parameter_shapes(state, directory: Path, params: dict[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` if the checkpoint's parameters differ from this fit's in name or shape.

        The settings and the data already match at this point, so a difference
        means that the file is damaged.
        """
        where = directory / "checkpoint.pt"
        saved = state["params"]
        if not isinstance(saved, dict) or set(saved) != set(params):
            names = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(
                f"{where} stores the parameters {names}, but this fit has {sorted(params)}, so the "
                "file is damaged: remove it to start the fit again, or choose another run directory"
            )
        for name, tensor in params.items():
            stored = saved[name]
            shape = tuple(stored.shape) if isinstance(stored, torch.Tensor) else type(stored).__name__
            if shape != tuple(tensor.shape):
                raise ValueError(
                    f"{where} stores parameter {name!r} of shape {shape}, but this fit "
                    f"has {tuple(tensor.shape)}, so the file is damaged: remove it to start the fit "
                    "again, or choose another run directory"
                )

    def _restore(self, state, params, optimizer, generator: torch.Generator) -> None:
        """Copy parameters, optimiser state and RNG state from a checkpoint."""
        for name, tensor in state["params"].items():
            params[name].data.copy_(tensor.to(device=params[name].device, dtype=params[name].dtype))
        optimizer.load_state_dict(state["optimizer"])
        self._restore_generator(generator, state, generator.device)

    def _restore_generator(self, generator: torch.Generator, state, device: torch.device) -> None:
        if state["generator_device"] == device.type:
            generator.set_state(state["generator"])
            return
        # CPU and CUDA generators have different state formats, so a run moved
        # between devices continues with a new stream derived from seed and epoch.
        warn(
            f"checkpoint RNG state is from {state['generator_device']}, this run is on "
            f"{device.type}: continuing with a new random stream, so results will differ from "
            "an uninterrupted run", UserWarning,
        )
        generator.manual_seed(int(self.random_state) * 1_000_003 + int(state["epoch"]))

    # ---- using the fitted model -----------------------------------------------

    def _check_fitted(self) -> None:
        from sklearn.exceptions import NotFittedError

        if not hasattr(self, "embedding_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit first")

    def _check_predictable(self, method: str) -> None:
        """Raise unless the estimator is fitted and has the parameters that ``method`` uses.

        An estimator loaded from a folder that lacks some parameters has
        ``_params`` None (see :meth:`load`).
        """
        self._check_fitted()
        if self._params is None:
            raise ValueError(self._missing_parameters_message(method))

    def _missing_parameters_message(self, method: str) -> str:
        raise NotImplementedError

    def predict_proba(self, triplets: Any) -> np.ndarray:
        """Return the probability that each pair is the most similar.

        Args:
            triplets (array-like): Shape ``(n, 3)``, 0-based object indices.

        Returns:
            np.ndarray: Shape ``(n, 3)``, in the estimator's ``dtype``, with
            columns for the pairs (0, 1), (0, 2) and (1, 2) of each row.
            Column 0 is the probability that the last object is the odd one
            out. VICE averages the probabilities over ``mc_samples`` draws
            from the posterior.

        Raises:
            NotFittedError: Before ``fit``.
            ValueError: On invalid or empty triplets, an index outside
                ``0 .. n_objects_ - 1``, or a VICE loaded from a folder
                without ``log_scale`` (see :meth:`load`).
        """
        return self._log_proba(triplets, "predict_proba").exp().cpu().numpy()

    def predict(self, triplets: Any) -> np.ndarray:
        """Predict the odd one out of each triplet.

        The prediction is the object outside the pair of highest probability
        in :meth:`predict_proba`. With the canonical triplet format, where the
        last column is the recorded odd one out, a row is predicted correctly
        when the result is 2. When two or three pairs tie for the highest
        probability, the lowest of the tied positions is returned. An
        embedding without kept dimensions ties every pair, so it predicts 0
        for every row.

        :meth:`score` equals ``numpy.mean(model.predict(triplets) == 2)`` on
        rows without ties. :meth:`score` counts a tie of m pairs that includes
        the recorded pair as 1/m of a hit, while ``predict`` picks one object.
        Both compare the very probabilities that :meth:`predict_proba`
        returns, so a tie there is a tie for them. In float32, two pairs
        whose log-probabilities differ by one step can round to the same
        probability.

        Args:
            triplets (array-like): Shape ``(n, 3)``, 0-based object indices.

        Returns:
            np.ndarray: Shape ``(n,)``, int64, the column (0, 1 or 2) of the
            predicted odd one out in each row. The object index itself is
            ``triplets[numpy.arange(n), model.predict(triplets)]``.

        Raises:
            NotFittedError: Before ``fit``.
            ValueError: On invalid or empty triplets, an index outside
                ``0 .. n_objects_ - 1``, or a VICE loaded from a folder
                without ``log_scale`` (see :meth:`load`).
        """
        proba = self._log_proba(triplets, "predict").exp().cpu().numpy()
        # Pairs (0, 1), (0, 2) and (1, 2) leave out the objects in columns 2, 1 and 0.
        # Reversed, column c is the probability that object c is the odd one out,
        # and numpy.argmax returns the first of tied maxima.
        return np.argmax(proba[:, ::-1], axis=1).astype(np.int64)

    def score(self, triplets: Any, y: Any = None) -> float:
        """Return the odd-one-out accuracy on ``triplets``.

        A triplet is a hit when the pair of its first two objects has the
        highest predicted probability, so that :meth:`predict` returns 2 for
        it. When m pairs tie for the highest probability and the first pair
        is among them, the triplet counts 1/m of a hit. VICE
        predicts with the posterior predictive, the choice probabilities
        averaged over ``mc_samples`` draws from the posterior (seeded, so the
        score is repeatable). That differs from the accuracy of the
        posterior means ``embedding_`` alone, which
        :func:`dimalign.analysis.similarity.odd_one_out_accuracy` computes,
        by several points while the posterior is wide.

        Args:
            triplets (array-like): Shape ``(n, 3)``, 0-based, odd one out in
                the last column.
            y (None): Ignored; present for the scikit-learn signature.

        Returns:
            float: Accuracy in ``[0, 1]``; chance is 1/3.

        Raises:
            NotFittedError: Before ``fit``.
            ValueError: On invalid or empty triplets, or a VICE loaded from
                a folder without ``log_scale`` (see :meth:`load`).
        """
        self._check_predictable("score")
        triplets_t = as_triplet_tensor(triplets, self.n_objects_, "scored").to(self._device)
        return self._evaluate(self._params, self.kept_dims_, triplets_t)["accuracy"]

    def _log_proba(self, triplets: Any, method: str) -> torch.Tensor:
        """Return the log-probabilities of :meth:`predict_proba`, shape ``(n, 3)``, on the fit's device.

        ``method`` is the public method that asks, which errors name.
        """
        self._check_predictable(method)
        source = f"the triplets passed to {method}"
        triplets_t = as_triplet_tensor(triplets, self.n_objects_, "scored", source).to(self._device)
        kept_t = torch.as_tensor(self.kept_dims_, dtype=torch.int64, device=self._device)
        with torch.no_grad():
            return self._predict_log_proba(self._params, kept_t, triplets_t)

    # ---- saving and loading ----------------------------------------------------

    @classmethod
    def load(cls, run_dir: str | os.PathLike, *, device: str | None = None) -> Self:
        """Load a fitted estimator from a folder that :meth:`save` or ``dimalign fit`` wrote.

        The estimator has the saved settings and fitted attributes, and its
        :meth:`predict`, :meth:`predict_proba` and :meth:`score` return
        exactly what the saved estimator returned on the same device. A
        setting that an older ``config.toml`` lacks takes its default, with
        a ``UserWarning`` that names it.

        The loaded estimator is for prediction: :meth:`fit` on it starts a
        new fit from the seed, as on any estimator. A ``dimalign fit`` run
        has ``checkpoint_dir`` set to its folder, so with
        ``set_params(resume=True, max_epochs=...)`` and the same triplets,
        :meth:`fit` trains on from the run's ``checkpoint.pt``.

        A VICE folder saved by an older build lacks ``log_scale``, the
        parameter that the posterior predictive takes ``exp`` of. It loads
        with every fitted attribute, but :meth:`predict`,
        :meth:`predict_proba` and :meth:`score` raise ``ValueError``.

        Args:
            run_dir (str | os.PathLike): The folder with ``config.toml``,
                ``embedding.npz`` and ``history.csv``.
            device (str | None): Device to predict on, replacing the saved
                ``device`` setting; None keeps the saved one. Pass ``"cpu"``
                to load a fit saved on a GPU on a machine without one.

        Returns:
            Self: A fitted estimator of the class that ``load`` is called on.

        Raises:
            FileNotFoundError: If ``run_dir`` or one of its three files is
                missing or a broken symbolic link.
            ValueError: If ``run_dir`` is a file, the output of another
                dimalign step or a fit of the other estimator, if a file is
                damaged or a setting invalid, or if the files do not belong
                together.

        Warns:
            UserWarning: If ``config.toml`` lacks a setting, which then takes
                its default, if a file of a ``dimalign fit`` run differs from
                the checksum of its ``manifest.json``, or if the folder
                contains a ``checkpoint.pt`` that the ``checkpoint_dir``
                setting does not name.

        Example:
            >>> import tempfile
            >>> from dimalign.embedding import SPoSE
            >>> rng = np.random.default_rng(0)
            >>> triplets = np.array([rng.choice(12, 3, replace=False) for _ in range(300)])
            >>> model = SPoSE(n_dims=5, max_epochs=2, min_objects=0).fit(triplets, n_objects=12)
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     loaded = SPoSE.load(model.save(folder))
            >>> loaded.score(triplets) == model.score(triplets)
            True
        """
        saved = read_saved_fit(run_dir, cls)
        settings = saved.settings if device is None else {**saved.settings, "device": device}
        model = cls(**settings)
        try:
            model._check_settings()
            dtype = model._dtype()
        except ValueError as error:
            raise ValueError(f"{saved.config_path}: {error}") from error
        try:
            torch_device = resolve_device(model.device)
        except ValueError as error:
            # The message of resolve_device advises a setting or CLI option, but load takes device=.
            if device is not None:
                raise ValueError(f"device={device!r} cannot be used ({error}): pass device='cpu' to load") from error
            raise ValueError(
                f"{saved.config_path}: the fit was saved with device {model.device!r}, which this machine "
                f"cannot use ({error}): pass device='cpu' to load"
            ) from error
        check_arrays(saved, model.n_dims)
        warn_edited_run(saved)
        warn_moved_checkpoint(saved)

        parameters = model._saved_parameters(saved)
        model._params = None if parameters is None else {
            name: torch.as_tensor(array).to(device=torch_device, dtype=dtype) for name, array in parameters.items()
        }
        model._params_source = saved.embedding_path
        model._device = torch_device
        model.n_objects_ = saved.fitted["n_objects"]
        model.n_epochs_ = saved.fitted["n_epochs"]
        model.converged_ = saved.fitted["converged"]
        model.history_ = saved.history
        model._set_loaded(saved.arrays)
        logger.info(
            "loaded %s from %s: %d objects, %d of %d dimensions kept, %d epochs",
            cls.__name__, saved.folder, model.n_objects_, model.n_dims_, model.n_dims, model.n_epochs_,
        )
        return model


    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write ``embedding.npz``, ``config.toml`` and ``history.csv`` into ``run_dir``.

        :meth:`load` reads the returned folder back as a fitted estimator,
        :func:`dimalign.io.runs.load_embedding` as an ``EmbeddingResult``
        (the arrays alone), and the commands that take a run directory, such
        as ``dimalign compare``, accept it. ``RidgeMap.save`` returns its
        folder in the same way.

        Args:
            run_dir (str | os.PathLike): Output folder, created when missing;
                files of the same names in it are replaced. The three files
                are written into a hidden folder first and moved into
                ``run_dir`` together, so that an error or Ctrl-C while they
                are written leaves the files of an earlier save whole.

        Returns:
            Path: ``run_dir``.

        Raises:
            NotFittedError: Before ``fit``.
            FileExistsError: If ``run_dir`` contains the ``manifest.json`` of
                a dimalign step, such as a run of ``dimalign fit``, which
                ``save`` would leave describing other files.
        """
        import tomli_w

        self._check_fitted()
        config = {
            "estimator": self._estimator_name,
            "settings": {key: toml_setting(value) for key, value in self.get_params().items()},
            "fitted": {
                "n_objects": int(self.n_objects_),
                "n_dims": int(self.n_dims_),
                "n_epochs": int(self.n_epochs_),
                "converged": bool(self.converged_),
            },
        }
        # Formatted before anything is written, so that a setting TOML cannot
        # store leaves no embedding.npz without its config.toml.
        config_text = tomli_w.dumps(config)
        run_dir = Path(run_dir)
        reject_recorded_folder(run_dir)
        with staged_outputs(run_dir) as stage:
            save_embedding(self._result(), stage)
            write_text_atomic(stage / CONFIG_NAME, config_text)
            write_text_atomic(stage / HISTORY_NAME, history_to_csv(self.history_))
        return run_dir

