"""Running independent tasks (such as one fit per seed) in parallel.

Two engines run the same task function:

- ``"local"``: a ``concurrent.futures.ProcessPoolExecutor`` on this machine
  with the ``spawn`` start method, so each worker starts a fresh interpreter
  and shares no torch or random state with the parent. With ``n_jobs=1`` the
  tasks run one after another in this process.
- ``"ray"``: Ray tasks, on a running cluster (``address``) or on a local
  Ray instance started for the call and shut down afterwards. An instance that
  the caller initialised already is used as it is.

Task functions should limit torch to one thread themselves (see
:func:`limit_torch_threads`), so that ``n_jobs`` workers use ``n_jobs`` cores
and a result does not depend on how many threads a machine offers.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@contextlib.contextmanager
def limit_torch_threads(n_threads: int = 1) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(n_threads)`` and restore the old count after it.

    One intra-op thread per worker keeps parallel workers from competing for
    cores. It also makes reductions run in the same order whether a task runs
    alone, in a local pool or on Ray.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_tasks(
    function: Callable[..., Any],
    tasks: Sequence[Mapping[str, Any]],
    *,
    n_jobs: int = 1,
    engine: str = "local",
    address: str | None = None,
    names: Sequence[str] | None = None,
) -> list[Any]:
    """Call ``function(**task)`` for every task and return the results in task order.

    Args:
        function (Callable): A module-level function (it is pickled for the workers).
        tasks (Sequence[Mapping[str, Any]]): Keyword arguments of each call.
        n_jobs (int): Parallel workers for ``"local"``; the CPUs of a Ray
            instance started here.
        engine (str): ``"local"`` or ``"ray"``.
        address (str | None): Address of a running Ray cluster (``"auto"`` or
            ``"ray://host:10001"``); None starts a local Ray instance.
        names (Sequence[str] | None): A label of each task for logs and errors.

    Returns:
        list: ``function``'s return value for each task.

    Raises:
        ValueError: For an unknown engine or ``n_jobs < 1``.
        RuntimeError: When a task fails; the message names the task and the
            original error is chained.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if n_jobs < 1:
        raise ValueError(f"n_jobs={n_jobs} is invalid: use 1 or more")
    names = list(names) if names is not None else [f"task {index}" for index in range(len(tasks))]
    if len(names) != len(tasks):
        raise ValueError(f"{len(names)} names for {len(tasks)} tasks")
    if not tasks:
        return []
    logger.info("running %d tasks with engine %s (n_jobs=%d)", len(tasks), engine, n_jobs)
    if engine == "ray":
        return _run_ray(function, tasks, names, n_jobs, address)
    if n_jobs == 1:
        return [_call(function, task, name) for task, name in zip(tasks, names)]
    return _run_process_pool(function, tasks, names, n_jobs)


def _call(function: Callable[..., Any], task: Mapping[str, Any], name: str) -> Any:
    try:
        return function(**task)
    except Exception as error:
        raise RuntimeError(f"{name} failed: {error}") from error


def _run_process_pool(
    function: Callable[..., Any], tasks: Sequence[Mapping[str, Any]], names: list[str], n_jobs: int
) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(tasks)), mp_context=context) as executor:
        futures = [executor.submit(function, **task) for task in tasks]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future, name in zip(futures, names):
            if future in done and future.exception() is not None:
                for pending in futures:
                    pending.cancel()
                error = future.exception()
                logger.error("%s failed: %s", name, error)
                raise RuntimeError(f"{name} failed: {error}") from error
        results = []
        for future, name in zip(futures, names):
            try:
                results.append(future.result())
            except Exception as error:
                logger.error("%s failed: %s", name, error)
                raise RuntimeError(f"{name} failed: {error}") from error
            logger.info("%s finished", name)
        return results


def _run_ray(
    function: Callable[..., Any],
    tasks: Sequence[Mapping[str, Any]],
    names: list[str],
    n_jobs: int,
    address: str | None,
) -> list[Any]:
    try:
        import ray
    except ModuleNotFoundError as error:
        raise RuntimeError(
            "engine 'ray' needs the ray package: pip install 'dimalign[ray]'"
        ) from error

    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            ray.init(num_cpus=n_jobs, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(function)
        references = [remote.remote(**task) for task in tasks]
        results = []
        for reference, name in zip(references, names):
            try:
                results.append(ray.get(reference))
            except Exception as error:
                for other in references:
                    ray.cancel(other)
                logger.error("%s failed on Ray: %s", name, error)
                raise RuntimeError(f"{name} failed on Ray: {error}") from error
            logger.info("%s finished on Ray", name)
        return results
    finally:
        if started_here:
            ray.shutdown()


__all__ = ["ENGINES", "limit_torch_threads", "run_tasks"]
