"""Choice of the torch device: CPU by default, CUDA only where it exists."""

from __future__ import annotations

import os

import torch


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
    reports. On the CPU it is ``MemAvailable`` of ``/proc/meminfo`` (Linux:
    free memory plus the page cache that the kernel can drop), else the
    physical memory from ``os.sysconf``, which is an upper bound.

    NOTE: A memory limit of a container (cgroup) is not read, so inside one
    the result may exceed what the process can use.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file gives kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def format_bytes(size: int) -> str:
    """Format a byte count in MiB, GiB or TiB with one decimal: ``35.8 GiB``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 2**20:.1f} MiB"
