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
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")

# The logger that dimalign.cli configures, parent of every module's logger.
_PACKAGE_LOGGER = "dimalign"


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


class WorkerStopped(BaseException):
    """Raised inside a worker's task when the parent stops the pool (SIGTERM to the worker).

    It derives from ``BaseException``, like ``KeyboardInterrupt``, so that
    ``except Exception`` clauses in a task let it through and cleanup such as
    :func:`dimalign.io.files.output_dir` runs.
    """


# Whether this worker process was asked to stop, and whether a task runs in it now.
_stop_requested = False
_task_running = False
_parent_pid: int | None = None


def _start_worker(log_level: int, log_formatter: logging.Formatter | None, parent_pid: int | None = None) -> None:
    """Set up the signals and the log output of a pool worker.

    Ctrl-C and SIGHUP are ignored: in a terminal they reach every process of
    the foreground group (SIGHUP when the terminal closes), and the parent
    stops the workers itself. SIGTERM from
    the parent stops the running task and every task that the worker would
    take from the queue after it, and ends an idle worker. On Linux the
    worker also gets SIGTERM when its parent dies, even by SIGKILL, which
    would otherwise leave it idle for ever.

    A spawned worker starts without the parent's logging setup. When the
    parent's ``dimalign`` logger has a handler (the command line sets one),
    the worker logs to standard error at the same level and format, and shows
    warnings as log lines, as the parent does.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _request_stop)
    global _parent_pid
    if parent_pid is not None:
        _parent_pid = parent_pid
        _stop_with_parent(parent_pid)
    if log_formatter is None:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter)
    package_logger = logging.getLogger(_PACKAGE_LOGGER)
    package_logger.handlers[:] = [handler]
    package_logger.setLevel(log_level)
    package_logger.propagate = False
    warnings.showwarning = _log_warning


def _stop_with_parent(parent_pid: int) -> None:
    """Ask Linux to send SIGTERM to this process when its parent dies (``PR_SET_PDEATHSIG``).

    Elsewhere this does nothing. The signal follows the death of the parent's
    thread that started the worker: ``ProcessPoolExecutor`` of Python 3.11
    starts every worker from the thread that submits the tasks, here the
    main thread of the parent.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # from <linux/prctl.h>
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        # The parent died before the request took effect.
        os._exit(128 + signal.SIGTERM)


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logging.getLogger(_PACKAGE_LOGGER).warning("%s", message)


def _parent_log_setup() -> tuple[int, logging.Formatter | None]:
    """Return the level and formatter of this process's ``dimalign`` log handler, for the workers."""
    package_logger = logging.getLogger(_PACKAGE_LOGGER)
    formatter = package_logger.handlers[0].formatter if package_logger.handlers else None
    return package_logger.getEffectiveLevel(), formatter


def _request_stop(signum: int, frame: Any) -> None:
    global _stop_requested
    _stop_requested = True
    if _task_running:
        raise WorkerStopped(f"stopped by signal {signum}")
    # An idle worker has nothing to clean up, so it ends as SIGTERM ends a process by default.
    os._exit(128 + signum)


def _call_in_worker(function: Callable[..., Any], task: Mapping[str, Any]) -> Any:
    """Call ``function(**task)`` unless the worker was stopped, which raises :class:`WorkerStopped`."""
    global _task_running
    if _stop_requested:
        raise WorkerStopped("the pool was stopped before this task started")
    _task_running = True
    try:
        return function(**task)
    finally:
        _task_running = False
        if _stop_requested and _parent_pid is not None and os.getppid() != _parent_pid:
            # The parent died, so no process reads the result or sends another task.
            os._exit(128 + signal.SIGTERM)


def _stop_workers(executor: ProcessPoolExecutor) -> None:
    """Send SIGTERM to every live worker of ``executor``.

    NOTE: ``ProcessPoolExecutor`` of Python 3.11 has no public method that
    reaches its workers, so this reads the private ``_processes`` mapping of
    process id to process.
    """
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()


def _run_process_pool(
    function: Callable[..., Any], tasks: Sequence[Mapping[str, Any]], names: list[str], n_jobs: int
) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(
        max_workers=min(n_jobs, len(tasks)), mp_context=context, initializer=_start_worker,
        initargs=(*_parent_log_setup(), os.getpid()),
    )
    futures = []
    try:
        futures = [executor.submit(_call_in_worker, function, task) for task in tasks]
        results = _collect_results(futures, names)
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C or SIGTERM (which dimalign.cli turns into SystemExit) arrives
        # here, since workers ignore Ctrl-C. The queued tasks are cancelled and
        # the running ones stopped, so that each removes what it wrote unless
        # it can be resumed. Without this, shutdown would wait for every queued task.
        logger.warning("interrupted: cancelling the queued tasks and stopping the running ones")
        for future in futures:
            future.cancel()
        _stop_workers(executor)
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
    return results


def _collect_results(futures: Sequence[Any], names: list[str]) -> list[Any]:
    """Wait for ``futures`` and return their results, raising on the first failed task."""
    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    for future, name in zip(futures, names):
        if future in done and future.exception() is not None:
            for pending in futures:
                pending.cancel()
            error = future.exception()
            # Logged now because shutting the pool down waits for the running
            # tasks, which can take many minutes; the caller reports the error.
            logger.error(
                "%s failed: %s; waiting for the running tasks to finish (the queued ones are cancelled)",
                name, error,
            )
            raise RuntimeError(f"{name} failed: {error}") from error
    results = []
    for future, name in zip(futures, names):
        try:
            results.append(future.result())
        except Exception as error:
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
