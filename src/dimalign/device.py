"""Choice of the torch device: CPU by default, CUDA only where it exists."""

from __future__ import annotations

import torch

from dimalign.memory import available_memory_bytes


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """Turn a device request into a ``torch.device``.

    Args:
        device (str | torch.device | None): ``"cpu"`` (default, also for None),
            ``"cuda"`` or ``"cuda:N"`` (requires a GPU), or ``"auto"`` (CUDA
            when available, else CPU).

    Returns:
        torch.device: The device to use.

    Raises:
        ValueError: If CUDA is requested on a machine without a usable GPU, or
            the name is not a valid torch device.
    """
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"invalid device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as error:
        raise ValueError(
            f"invalid device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'"
        ) from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported: use 'cpu', 'cuda', 'cuda:N' or 'auto'")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but no CUDA GPU is available on this "
            "machine; use device 'cpu' or 'auto' (CLI: --device cpu)"
        )
    return resolved


def available_memory(device: torch.device) -> int | None:
    """Return the memory in bytes that a new allocation on ``device`` can use, or None when unknown.

    On a CUDA device this is the free memory that ``torch.cuda.mem_get_info``
    reports, plus the memory that torch's caching allocator holds for this
    process without using it (reserved minus allocated), which it reuses
    before it requests more from the device. On the CPU it is
    :func:`dimalign.memory.available_memory_bytes`.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # A second fit in one notebook finds the blocks of the first one cached, not free.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + max(0, int(cached))
    if device.type != "cpu":
        return None
    return available_memory_bytes()
