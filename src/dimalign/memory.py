"""Memory available to new allocations, for estimates checked before large work starts.

This module imports neither numpy nor torch, so the command line can check a
request before it loads them.
"""

from __future__ import annotations

import os
from pathlib import Path


def available_memory_bytes(
    proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """Return the memory in bytes that new allocations can use, or None where unknown.

    On Linux this is ``MemAvailable`` of ``/proc/meminfo`` (free memory plus
    the page cache that the kernel can drop), lowered to the headroom of this
    process's memory cgroup where one sets a limit, as in Slurm jobs and
    containers: their processes are killed at the limit however much the
    machine has free. Elsewhere it is the physical memory from
    ``os.sysconf``, an upper bound.

    Args:
        proc_root (Path): The proc file system (a parameter for tests).
        cgroup_root (Path): The cgroup file system (a parameter for tests).

    Returns:
        int | None: Bytes, or None where neither source exists.
    """
    available = None
    try:
        with open(proc_root / "meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        available = None
    if available is None:
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    headroom = _cgroup_headroom(proc_root, cgroup_root)
    return available if headroom is None else min(available, headroom)


def _cgroup_headroom(proc_root: Path, cgroup_root: Path) -> int | None:
    """Return the memory limit minus the usage (less the inactive file cache) of this process's cgroup, or None without a limit."""
    # In /proc/self/cgroup, cgroup v2 lists "0::/path" and v1 "N:memory:/path".
    # The usage includes the page cache of files the job read. The kernel
    # drops that cache before it kills a process, so its inactive part counts
    # as free, as it does in MemAvailable.
    try:
        lines = (proc_root / "self" / "cgroup").read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    headrooms = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            # v2 keeps the limit in memory.max and the usage in memory.current.
            top, files = cgroup_root, ("memory.max", "memory.current")
            cache_key = "inactive_file"
        elif "memory" in parts[1].split(","):
            top, files = cgroup_root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes")
            # v1's inactive_file leaves out the child cgroups, which the usage includes.
            cache_key = "total_inactive_file"
        else:
            continue
        # A limit set on a parent (a Slurm job above its steps) binds as well.
        relative = Path(parts[2].lstrip("/"))
        for folder in [top / relative, *[top / parent for parent in relative.parents]]:
            try:
                limit = (folder / files[0]).read_text(encoding="ascii").strip()
                usage = (folder / files[1]).read_text(encoding="ascii").strip()
                # "max" (v2) or a value near 2^63 (v1) means no limit.
                if limit != "max" and int(limit) < 2**60:
                    used = int(usage) - _cgroup_stat(folder, cache_key)
                    headrooms.append(max(0, int(limit) - used))
            except (OSError, ValueError):
                continue
    return min(headrooms) if headrooms else None


def _cgroup_stat(folder: Path, key: str) -> int:
    """Return one value of a cgroup's ``memory.stat`` in bytes, or 0 where it is missing."""
    try:
        lines = (folder / "memory.stat").read_text(encoding="ascii").splitlines()
    except OSError:
        return 0
    for line in lines:
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def format_bytes(n_bytes: float) -> str:
    """Format a byte count with a decimal unit and one decimal, such as ``2.3 GB``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{int(n_bytes)} bytes"
