"""Checkpoints of a training run: parameters, optimiser and RNG state, written atomically."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dimalign.io.files import atomic_path, exclusive_lock

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"

#: Lock file that a running fit holds in its ``checkpoint_dir``.
CHECKPOINT_LOCK_NAME = ".checkpoint.lock"
CHECKPOINT_FORMAT = 1

# Entries that every checkpoint of this format has. val_sha256 is left out,
# because checkpoints written before it was recorded lack it.
REQUIRED_ENTRIES = (
    "estimator", "config", "n_objects", "data_sha256", "epoch", "stable_epochs", "last_n_kept",
    "params", "optimizer", "generator", "generator_device", "history",
)


def save_checkpoint(state: dict[str, Any], directory: str | os.PathLike) -> Path:
    """Write ``state`` to ``directory/checkpoint.pt`` through a temporary file.

    Args:
        state (dict[str, Any]): Tensors, numbers, strings and containers,
            with the entries of :data:`REQUIRED_ENTRIES`.
        directory (str | os.PathLike): An existing folder.

    Returns:
        Path: The written ``checkpoint.pt``.

    Raises:
        OSError: If the file cannot be written (a full disk, no permission),
            naming ``checkpoint.pt``.
    """
    target = Path(directory) / CHECKPOINT_NAME
    # torch.save into a file reports a failed write as a RuntimeError without
    # the file or the cause ("basic_ios::clear: iostream error" on a full
    # disk), so the bytes are built in memory and written by Python.
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    with atomic_path(target) as temporary:
        temporary.write_bytes(buffer.getbuffer())
    return target


def load_checkpoint(directory: str | os.PathLike) -> dict[str, Any] | None:
    """Load ``directory/checkpoint.pt`` onto the CPU, or return None if there is none.

    Tensors saved on a GPU are mapped to the CPU, and the caller moves them
    to its device.

    Args:
        directory (str | os.PathLike): The folder of the checkpoint.

    Returns:
        dict[str, Any] | None: The saved state, or None without a ``checkpoint.pt``.

    Raises:
        ValueError: If the file is not a dimalign checkpoint of a known format,
            or lacks one of its entries.
    """
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        # Tensors, numbers, strings and containers only: a checkpoint runs no code when loaded.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} cannot be read as a dimalign checkpoint ({type(error).__name__}: {error}); "
            "the file may be truncated or come from another program: remove it to start the fit "
            "again, or choose another run directory"
        ) from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a dimalign checkpoint of format {CHECKPOINT_FORMAT}; "
            "remove it or choose another run directory"
        )
    missing = [name for name in REQUIRED_ENTRIES if name not in state]
    if missing:
        raise ValueError(
            f"{path} lacks the entries {missing} of a dimalign checkpoint of format "
            f"{CHECKPOINT_FORMAT}, so it is damaged or was written by another program: remove it "
            "to start the fit again, or choose another run directory"
        )
    logger.info("loaded checkpoint %s (epoch %d)", path, state["epoch"])
    return state


@contextlib.contextmanager
def checkpoint_lock(directory: str | os.PathLike | None) -> Iterator[None]:
    """Hold the lock of ``directory`` for the block, so that one fit at a time uses its checkpoint.

    The folder is created when missing. If the block leaves it empty (a fit
    that failed before its first checkpoint), the folders created here are
    removed again. The system releases the lock when the process dies, even
    by SIGKILL, so a stale lock file blocks no later fit.

    Args:
        directory (str | os.PathLike | None): The ``checkpoint_dir`` of a
            fit. None holds no lock.

    Raises:
        NotADirectoryError: If ``directory`` is a file.
        RuntimeError: If another fit, in this process or another one, holds
            the lock. The message names the folder.
        OSError: If the folder or the lock file cannot be created.
    """
    if directory is None:
        yield
        return
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"checkpoint_dir {folder} is a file, but a fit writes its {CHECKPOINT_NAME} into a folder "
            "of that name: pass the path of a folder, or None for a fit without checkpoints"
        )
    created = [candidate for candidate in (folder, *folder.parents) if not candidate.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / CHECKPOINT_LOCK_NAME
    busy = (
        f"{folder} is the checkpoint_dir of another fit that is running, which holds {lock_path}: "
        "give each fit its own checkpoint_dir, or wait for that fit to finish and pass resume=True "
        "to continue it"
    )
    try:
        with exclusive_lock(lock_path, busy):
            yield
    finally:
        # Created folders are listed from the deepest up, and rmdir removes only empty ones.
        for candidate in created:
            try:
                candidate.rmdir()
            except OSError:
                break
