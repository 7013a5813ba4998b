"""Tests of seed sweeps (local processes and Ray) and run selection."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dimalign.analysis.reproducibility import R_CLIP
from dimalign.analysis.selection import find_runs, select_run
from dimalign.analysis.sweep import fit_seed, sweep
from dimalign.io.objects import ObjectTable
from dimalign.io.runs import EmbeddingResult, load_embedding, save_embedding
from dimalign.parallel import run_tasks

N_OBJECTS = 20
SETTINGS = {"n_dims": 8, "max_epochs": 3, "stability_epochs": 50, "mc_samples": 2}


@pytest.fixture(scope="module")
def tiny_triplets():
    rng = np.random.default_rng(0)
    triplets = np.array([rng.choice(N_OBJECTS, 3, replace=False) for _ in range(400)])
    return triplets[:360], triplets[360:]


def fit_alone(tmp_path, name, seed, train, val):
    """Fit one seed in this process, as a sweep worker would."""
    train_path = tmp_path / f"{name}_train.npy"
    np.save(train_path, train)
    val_path = None
    if val is not None:
        val_path = tmp_path / f"{name}_val.npy"
        np.save(val_path, val)
    fit_seed(
        method="vice", settings=SETTINGS, seed=seed, train_path=str(train_path),
        val_path=str(val_path) if val_path else None, out_dir=str(tmp_path / name), n_objects=N_OBJECTS,
    )
    return load_embedding(tmp_path / name)


def add_one(value):
    return value + 1


def warn_and_log(value):
    logging.getLogger("dimalign.analysis.sweep").info("task %d logs", value)
    warnings.warn(f"task {value} warns", UserWarning)
    return value


def idle_pool_worker(marker):
    """Set up like a pool worker, then wait idle for up to 60 s."""
    from dimalign.parallel import _start_worker

    _start_worker(logging.INFO, None)
    Path(marker).touch()
    time.sleep(60)


def hang_up_own_worker(value):
    """Send SIGHUP to the worker running this task, as a closed terminal does to its process group."""
    os.kill(os.getpid(), signal.SIGHUP)
    return value


def wait_until_stopped(marker_dir, index):
    """Mark the task as started, wait up to 60 s, and mark it as stopped when the pool stops it."""
    (Path(marker_dir) / f"started_{index}").touch()
    try:
        time.sleep(60)
    except BaseException:
        (Path(marker_dir) / f"stopped_{index}").touch()
        raise
    return index


@pytest.mark.slow
def test_seed_identical_alone_and_in_pool(tmp_path, tiny_triplets):
    train, val = tiny_triplets
    alone = fit_alone(tmp_path, "alone", 1, train, val)
    alone_without_val = fit_alone(tmp_path, "alone_no_val", 1, train, None)
    table = sweep(
        train, val, tmp_path / "sweep", seeds=[0, 1], n_objects=N_OBJECTS, settings=SETTINGS,
        n_jobs=2, object_table=ObjectTable.from_ids([f"object{i}" for i in range(N_OBJECTS)]),
    )
    pooled = load_embedding(tmp_path / "sweep" / "runs" / "seed_1")
    other_seed = load_embedding(tmp_path / "sweep" / "runs" / "seed_0")

    np.testing.assert_array_equal(pooled.loc, alone.loc)
    np.testing.assert_array_equal(pooled.embedding, alone.embedding)
    # Scoring the validation triplets during training must not move the fit.
    np.testing.assert_array_equal(alone_without_val.loc, alone.loc)
    assert not np.array_equal(other_seed.loc, alone.loc)

    assert table["seed"].tolist() == [0, 1]
    assert table["val_accuracy"].between(0, 1).all()
    written = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    assert written["seed"].tolist() == [0, 1]
    manifest = json.loads((tmp_path / "sweep" / "manifest.json").read_text())
    assert manifest["settings"]["torch_threads_per_worker"] == 1
    assert (tmp_path / "sweep" / "runs" / "seed_1" / "objects.tsv").is_file()

    # Selection on the real sweep output.
    selection = select_run(find_runs(tmp_path / "sweep"), tmp_path / "select")
    runs = pd.read_csv(tmp_path / "select" / "runs.csv")
    assert runs.columns.tolist() == [
        "seed", "run_dir", "n_dims", "val_accuracy", "point_val_accuracy", "reproducibility", "selected",
    ]
    # val_accuracy means the manifest's recorded value in both tables.
    assert runs["val_accuracy"].tolist() == written["val_accuracy"].tolist()
    assert runs["selected"].sum() == 1
    assert (tmp_path / "select" / "selected.txt").read_text().strip() == str(selection.selected_run)


@pytest.mark.slow
def test_seed_identical_on_local_ray(tmp_path, tiny_triplets, monkeypatch):
    ray = pytest.importorskip("ray")
    train, val = tiny_triplets
    alone = fit_alone(tmp_path, "alone", 2, train, val)
    # Ray replaces 127.0.0.1 by the machine's outward address unless clusters
    # are off, which keeps this test's Ray instance on the loopback interface.
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert [node["NodeManagerAddress"] for node in ray.nodes()] == ["127.0.0.1"]
        sweep(
            train, val, tmp_path / "sweep", seeds=[2], n_objects=N_OBJECTS, settings=SETTINGS,
            engine="ray",
        )
    finally:
        ray.shutdown()
    on_ray = load_embedding(tmp_path / "sweep" / "runs" / "seed_2")
    np.testing.assert_array_equal(on_ray.loc, alone.loc)
    np.testing.assert_array_equal(on_ray.embedding, alone.embedding)


def test_sweep_reuses_finished_runs(tmp_path, tiny_triplets):
    train, val = tiny_triplets
    first = sweep(train, val, tmp_path, seeds=[5], n_objects=N_OBJECTS, settings=SETTINGS)
    before = (tmp_path / "runs" / "seed_5" / "embedding.npz").stat().st_mtime_ns
    second = sweep(train, val, tmp_path, seeds=[5], n_objects=N_OBJECTS, settings=SETTINGS)
    after = (tmp_path / "runs" / "seed_5" / "embedding.npz").stat().st_mtime_ns
    assert before == after
    assert first["val_accuracy"].tolist() == second["val_accuracy"].tolist()


def test_sweep_reuses_runs_on_another_device(tmp_path, tiny_triplets):
    train, val = tiny_triplets
    sweep(train, val, tmp_path, seeds=[5], n_objects=N_OBJECTS, settings={**SETTINGS, "device": "auto"})
    before = (tmp_path / "runs" / "seed_5" / "embedding.npz").stat().st_mtime_ns
    sweep(
        train, val, tmp_path, seeds=[5], n_objects=N_OBJECTS,
        settings={**SETTINGS, "device": "cpu", "verbose": False, "checkpoint_every": 2},
    )
    assert (tmp_path / "runs" / "seed_5" / "embedding.npz").stat().st_mtime_ns == before


def test_sweep_failed_seed_keeps_other_runs(tmp_path, tiny_triplets, monkeypatch):
    import dimalign.embedding.runs as runs_module

    train, val = tiny_triplets
    out = tmp_path / "sweep"
    real_fit_and_save = runs_module._fit_and_save

    def finish_seed_1_then_fail(estimator, train_array, val_array, out_dir, *args):
        if out_dir.name != "seed_0":
            return real_fit_and_save(estimator, train_array, val_array, out_dir, *args)
        # Seed 1 finishes while seed 0 still runs, as in a pool of two workers.
        fit_seed(
            method="vice", settings=SETTINGS, seed=1, train_path=str(out / "train.npy"),
            val_path=str(out / "val.npy"), out_dir=str(out / "runs" / "seed_1"), n_objects=N_OBJECTS,
        )
        raise RuntimeError("seed 0 diverged")

    monkeypatch.setattr(runs_module, "_fit_and_save", finish_seed_1_then_fail)
    with pytest.raises(RuntimeError, match="seed 0 failed: seed 0 diverged"):
        sweep(train, val, out, seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)

    assert not (out / "runs" / "seed_0").exists()
    assert (out / "runs" / "seed_1" / "embedding.npz").is_file()
    assert (out / "runs" / "seed_1" / "manifest.json").is_file()


def test_sweep_failure_removes_created_folder(tmp_path, tiny_triplets, monkeypatch):
    import dimalign.embedding.runs as runs_module

    def fail(*args):
        raise RuntimeError("seed 0 diverged")

    monkeypatch.setattr(runs_module, "_fit_and_save", fail)
    train, val = tiny_triplets
    out = tmp_path / "new" / "sweep"

    with pytest.raises(RuntimeError, match="seed 0 failed"):
        sweep(train, val, out, seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)

    assert not (tmp_path / "new").exists()


def test_sweep_rejects_reserved_setting(tmp_path, tiny_triplets):
    train, val = tiny_triplets
    with pytest.raises(ValueError, match="random_state"):
        sweep(train, val, tmp_path, seeds=[0], n_objects=N_OBJECTS, settings={"random_state": 3})


def test_sweep_rejects_repeated_seeds(tmp_path, tiny_triplets):
    train, val = tiny_triplets
    with pytest.raises(ValueError, match="distinct"):
        sweep(train, val, tmp_path, seeds=[0, 0], n_objects=N_OBJECTS)


def test_sweep_accepts_seed_generator(tmp_path, tiny_triplets):
    # The integer check must not use up a one-pass iterable before the seeds are read.
    train, val = tiny_triplets
    table = sweep(train, val, tmp_path, seeds=(seed for seed in [4, 2]), n_objects=N_OBJECTS, settings=SETTINGS)

    assert table["seed"].tolist() == [4, 2]
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["seed_2", "seed_4"]


@pytest.mark.parametrize("seed", [1.5, "3", True])
def test_sweep_rejects_non_integer_seed(tmp_path, tiny_triplets, seed):
    # int() would turn 1.5 into seed 1 and fit a run that was not requested.
    train, val = tiny_triplets
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match=f"seeds must be integers, got {seed!r}"):
        sweep(train, val, out, seeds=[0, seed], n_objects=N_OBJECTS, settings=SETTINGS)
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [({"n_jobs": 0}, "n_jobs"), ({"engine": "slurm"}, "unknown engine"),
     ({"settings": {**SETTINGS, "device": "cuda"}}, "no CUDA GPU"),
     ({"settings": {**SETTINGS, "batch_size": 0}}, "batch_size")],
)
def test_sweep_invalid_settings_write_nothing(tmp_path, tiny_triplets, monkeypatch, options, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train, val = tiny_triplets
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match=message):
        sweep(train, val, out, seeds=[0], n_objects=N_OBJECTS, **{"settings": SETTINGS, **options})
    assert not out.exists()


def test_sweep_cli_n_jobs_zero_writes_nothing(tmp_path, tiny_triplets, capsys):
    from dimalign.cli import main

    train, _ = tiny_triplets
    np.save(tmp_path / "train.npy", train)
    out = tmp_path / "sweep"
    code = main(["sweep", str(tmp_path / "train.npy"), "--n-objects", str(N_OBJECTS), "-o", str(out),
                 "--seeds", "1", "--n-jobs", "0", "--max-epochs", "1"])
    assert code == 1
    assert "n_jobs=0" in capsys.readouterr().err
    assert not out.exists()


def write_run(path, embedding, val_accuracy, seed=None):
    save_embedding(EmbeddingResult(embedding=embedding), path)
    manifest = {"settings": {"random_state": seed}, "outputs": {"val_accuracy": val_accuracy}}
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_select_picks_reproduced_run(tmp_path):
    rng = np.random.default_rng(0)
    base = np.maximum(rng.normal(size=(40, 4)), 0.0)
    write_run(tmp_path / "runs" / "seed_0", base, 0.6, seed=0)
    write_run(tmp_path / "runs" / "seed_1", base[:, [2, 0, 3, 1]], 0.5, seed=1)
    write_run(tmp_path / "runs" / "seed_2", np.column_stack([base[:, :3], rng.random(40)]), 0.7, seed=2)

    selection = select_run(find_runs(tmp_path), tmp_path / "out", copy_selected=True)
    runs = selection.runs
    # Runs 0 and 1 reproduce each other exactly (score R_CLIP from run 1), run 2 has a random dimension.
    assert runs["seed"].tolist() == [0, 1, 2]
    assert runs["reproducibility"][2] < runs["reproducibility"][0]
    assert selection.selected_seed in (0, 1)
    assert runs["val_accuracy"].tolist() == [0.6, 0.5, 0.7]
    assert runs["point_val_accuracy"].isna().all()
    assert runs["reproducibility"].max() < R_CLIP

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["outputs"]["selected_run"] == str(selection.selected_run)
    assert manifest["settings"]["split"]["method"] == "odd_even"
    copy = tmp_path / "out" / "selected_run"
    assert copy.is_dir()
    assert not copy.is_symlink()
    np.testing.assert_array_equal(load_embedding(copy).embedding, load_embedding(selection.selected_run).embedding)


def test_find_runs_needs_two(tmp_path):
    write_run(tmp_path / "runs" / "seed_0", np.ones((10, 2)), 0.5)
    with pytest.raises(FileNotFoundError, match="1 finished run .*rerun 'dimalign sweep' into the same folder with more seeds"):
        find_runs(tmp_path)


def test_find_runs_warns_about_unfinished(tmp_path):
    base = np.maximum(np.random.default_rng(1).normal(size=(12, 2)), 0.0)
    for seed in (0, 1):
        write_run(tmp_path / "runs" / f"seed_{seed}", base, 0.5)
    (tmp_path / "runs" / "seed_2").mkdir()
    (tmp_path / "runs" / "seed_2" / "checkpoint.pt").write_bytes(b"")
    save_embedding(EmbeddingResult(embedding=base), tmp_path / "runs" / "seed_3")
    with pytest.warns(UserWarning, match=r"skipped 2 runs that are not finished: seed_2 \(only checkpoint.pt, unfinished\), seed_3 \(embedding.npz without manifest.json\)"):
        runs = find_runs(tmp_path)
    assert [path.name for path in runs] == ["seed_0", "seed_1"]


def test_select_rejects_folder_of_other_step(tmp_path):
    base = np.maximum(np.random.default_rng(2).normal(size=(12, 2)), 0.0)
    for seed in (0, 1):
        write_run(tmp_path / "runs" / f"seed_{seed}", base[:, ::(-1) ** seed], 0.5)
    target = tmp_path / "runs" / "seed_1"
    (target / "manifest.json").write_text(json.dumps({"step": "fit"}))
    with pytest.raises(FileExistsError, match="already contains the output of dimalign fit"):
        select_run(find_runs(tmp_path), target)
    assert json.loads((target / "manifest.json").read_text()) == {"step": "fit"}
    assert not (target / "runs.csv").exists()


def test_select_rejects_same_run_twice(tmp_path):
    base = np.maximum(np.random.default_rng(3).normal(size=(12, 2)), 0.0)
    write_run(tmp_path / "run", base, 0.5)
    with pytest.raises(ValueError, match="is given twice"):
        select_run([tmp_path / "run", tmp_path / ".." / tmp_path.name / "run"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_select_aligns_runs_by_object_id(tmp_path):
    from dimalign.analysis.reproducibility import reproducibility
    from dimalign.io.objects import write_object_table

    rng = np.random.default_rng(4)
    base = np.maximum(rng.normal(size=(30, 3)), 0.0)
    other = np.maximum(rng.normal(size=(30, 3)), 0.0)
    ids = [f"object{i:02d}" for i in range(30)]
    order = rng.permutation(30)
    write_run(tmp_path / "a", base, 0.5)
    write_object_table(ObjectTable.from_ids(ids), tmp_path / "a" / "objects.tsv")
    write_run(tmp_path / "b", base[order][:, ::-1], 0.5)
    write_object_table(ObjectTable.from_ids([ids[row] for row in order]), tmp_path / "b" / "objects.tsv")
    write_run(tmp_path / "c", other, 0.5)
    write_object_table(ObjectTable.from_ids(ids), tmp_path / "c" / "objects.tsv")

    selection = select_run([tmp_path / "a", tmp_path / "b", tmp_path / "c"], tmp_path / "out")
    # The runs store float32 weights, so the oracle uses the stored values.
    stored_base = load_embedding(tmp_path / "a").embedding
    stored_other = load_embedding(tmp_path / "c").embedding
    expected = reproducibility([stored_base, stored_base[:, ::-1], stored_other]).run_scores
    np.testing.assert_allclose(selection.runs["reproducibility"], expected, rtol=0, atol=1e-12)


def test_select_rejects_runs_of_other_objects(tmp_path):
    from dimalign.io.objects import write_object_table

    base = np.maximum(np.random.default_rng(5).normal(size=(12, 2)), 0.0)
    for name, last in (("a", "x"), ("b", "y")):
        write_run(tmp_path / name, base, 0.5)
        write_object_table(ObjectTable.from_ids([f"o{i}" for i in range(11)] + [last]), tmp_path / name / "objects.tsv")
    with pytest.raises(ValueError, match=r"1 ids only in the run .*a table \['x'\], 1 ids only in the run .*b table \['y'\]") as error:
        select_run([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert str(error.value).endswith("; select among runs fitted to the same objects")


def test_select_names_runs_of_other_sizes(tmp_path):
    write_run(tmp_path / "run_a", np.maximum(np.random.default_rng(6).normal(size=(30, 6)), 0.0), 0.5)
    np.save(tmp_path / "h29.npy", np.ones((29, 4)))
    with pytest.raises(ValueError, match=r"different numbers of objects: \{'.*run_a': \(30, 6\), '.*h29.npy': \(29, 4\)\}"):
        select_run([tmp_path / "run_a", tmp_path / "h29.npy"], tmp_path / "out")


def test_select_rerun_without_copy_removes_old_copy(tmp_path):
    base = np.maximum(np.random.default_rng(7).normal(size=(12, 2)), 0.0)
    for seed in (0, 1):
        write_run(tmp_path / "runs" / f"seed_{seed}", base[:, ::(-1) ** seed], 0.5)
    select_run(find_runs(tmp_path), tmp_path / "out", copy_selected=True)
    assert (tmp_path / "out" / "selected_run" / "embedding.npz").is_file()
    select_run(find_runs(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out" / "selected_run").exists()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["outputs"]["selected_copy"] is None


def test_select_computes_one_accuracy_for_every_run(tmp_path):
    from dimalign.analysis.similarity import odd_one_out_accuracy

    rng = np.random.default_rng(8)
    base = np.maximum(rng.normal(size=(12, 2)), 0.0)
    val = np.array([rng.choice(12, 3, replace=False) for _ in range(40)])
    write_run(tmp_path / "runs" / "seed_0", base, 0.4125)
    save_embedding(EmbeddingResult(embedding=base[:, ::-1]), tmp_path / "runs" / "seed_1")
    (tmp_path / "runs" / "seed_1" / "manifest.json").write_text(json.dumps({"outputs": {}}))
    selection = select_run(find_runs(tmp_path), tmp_path / "out", val=val)
    expected = odd_one_out_accuracy(base, val)
    assert selection.runs["point_val_accuracy"].tolist() == [expected, expected]
    assert selection.runs["val_accuracy"].tolist()[0] == 0.4125
    assert np.isnan(selection.runs["val_accuracy"].tolist()[1])


def test_sweep_rejects_empty_validation_split(tmp_path, tiny_triplets):
    train, _ = tiny_triplets
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match=r"the validation split is empty \(0 of 360 triplets\).*--val-fraction 0"):
        sweep(train, train[:0], out, seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)
    assert not out.exists()


def test_sweep_cli_tiny_file_then_no_validation(tmp_path, tiny_triplets, capsys):
    from dimalign.cli import main

    train, _ = tiny_triplets
    np.save(tmp_path / "tiny.npy", train[:5])
    out = tmp_path / "sweep"
    command = ["sweep", str(tmp_path / "tiny.npy"), "--n-objects", str(N_OBJECTS), "-o", str(out),
               "--seeds", "1", "--n-dims", "4", "--max-epochs", "1", "--mc-samples", "2"]
    assert main(command) == 1
    assert (f"--val-fraction 0.1 (the default) holds out no triplet of {tmp_path / 'tiny.npy'}, since "
            "round(0.1 x 5 triplets) = 0: use at least 0.2, or --val-fraction 0 to fit without validation"
            in capsys.readouterr().err)
    assert not out.exists()
    assert main(command + ["--val-fraction", "0"]) == 0
    assert not (out / "val.npy").exists()


def test_run_tasks_keeps_order():
    assert run_tasks(add_one, [{"value": 1}, {"value": 2}]) == [2, 3]


def test_run_tasks_names_failed_task():
    with pytest.raises(RuntimeError, match="seed 7 failed"):
        run_tasks(add_one, [{"value": "x"}], names=["seed 7"])


def test_run_tasks_pool_reports_a_failed_task_once(caplog):
    # The pool logs the failure when it happens, because the running tasks
    # still finish; the final error is left to the caller, not logged again.
    with caplog.at_level(logging.INFO, logger="dimalign.parallel"):
        with pytest.raises(RuntimeError, match="seed 7 failed"):
            run_tasks(add_one, [{"value": 1}, {"value": "x"}], names=["seed 6", "seed 7"], n_jobs=2)
    failures = [record.getMessage() for record in caplog.records if "failed" in record.getMessage()]
    assert len(failures) == 1
    assert "waiting for the running tasks to finish" in failures[0]


def test_pool_workers_ignore_sighup():
    """A closed terminal sends SIGHUP to the workers too; the parent stops them, so they must not just die."""
    assert run_tasks(hang_up_own_worker, [{"value": 1}, {"value": 2}], n_jobs=2) == [1, 2]


def test_run_tasks_interrupt_stops_pool(tmp_path):
    def interrupt_when_two_started():
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("started_*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    tasks = [{"marker_dir": str(tmp_path), "index": index} for index in range(4)]
    # A test run started in the background ignores SIGINT; Ctrl-C in a
    # terminal raises KeyboardInterrupt, as Python's default handler does.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_when_two_started, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_tasks(wait_until_stopped, tasks, n_jobs=2)
    finally:
        signal.signal(signal.SIGINT, previous)

    # Without the stop, the pool waited 60 s for each task, the queued ones included.
    assert time.monotonic() - started < 50
    assert sorted(path.name for path in tmp_path.glob("started_*")) == ["started_0", "started_1"]
    assert sorted(path.name for path in tmp_path.glob("stopped_*")) == ["stopped_0", "stopped_1"]


def test_run_tasks_workers_log_like_parent(capfd):
    from dimalign.cli import configure_logging

    package_logger = logging.getLogger("dimalign")
    saved = (package_logger.handlers[:], package_logger.level, package_logger.propagate)
    configure_logging()
    try:
        assert run_tasks(warn_and_log, [{"value": 1}, {"value": 2}], n_jobs=2) == [1, 2]
    finally:
        package_logger.handlers[:], package_logger.level, package_logger.propagate = saved
    err = capfd.readouterr().err
    for value in (1, 2):
        assert f"INFO dimalign.analysis.sweep: task {value} logs" in err
        assert f"WARNING dimalign: task {value} warns" in err
    assert "UserWarning" not in err


def test_idle_pool_worker_ends_on_sigterm(tmp_path):
    import multiprocessing

    marker = tmp_path / "ready"
    worker = multiprocessing.get_context("spawn").Process(target=idle_pool_worker, args=(str(marker),))
    worker.start()
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.terminate()
    worker.join(timeout=20)
    if worker.exitcode is None:
        worker.kill()
        worker.join()
    # 128 + SIGTERM, as a shell reports a process ended by SIGTERM.
    assert worker.exitcode == 143


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``, read from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG exists on Linux only")
def test_pool_workers_end_when_parent_is_killed():
    """SIGKILL of the process running the pool must not leave its workers idle for ever."""
    script = (
        "import functools, time\n"
        "from dimalign.parallel import run_tasks\n"
        "run_tasks(functools.partial(time.sleep, 120), [{}, {}], n_jobs=2)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            # The spawned workers; the resource tracker is a child too, and ends with them.
            workers = [pid for pid in _children(parent.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2
        time.sleep(1.0)  # let the workers run their initializer and take a task
    finally:
        parent.kill()
        parent.wait()

    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if _running(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []


def test_run_tasks_rejects_unknown_engine():
    with pytest.raises(ValueError, match="unknown engine"):
        run_tasks(add_one, [{"value": 1}], engine="dask")


def test_sweep_and_select_cli(tmp_path, tiny_triplets):
    from dimalign.cli import main

    train, _ = tiny_triplets
    np.save(tmp_path / "triplets.npy", train)
    code = main([
        "sweep", str(tmp_path / "triplets.npy"), "--n-objects", str(N_OBJECTS), "-o", str(tmp_path / "sweep"),
        "--seeds", "2", "--first-seed", "10", "--n-dims", "6", "--max-epochs", "2", "--mc-samples", "2",
    ])
    assert code == 0
    table = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    assert table["seed"].tolist() == [10, 11]
    assert (tmp_path / "sweep" / "val.npy").is_file()

    # Two epochs may prune a run to 0 dimensions; selection then warns and skips it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["select", str(tmp_path / "sweep"), "--split", "random", "--seed", "4"]) == 0
    selection = tmp_path / "sweep" / "selection"
    runs = pd.read_csv(selection / "runs.csv")
    assert runs["seed"].tolist() == [10, 11]
    best = runs["reproducibility"].idxmax()
    assert runs["selected"].tolist() == [row == best for row in range(2)]
    manifest = json.loads((selection / "manifest.json").read_text())
    assert manifest["settings"]["split"]["random_state"] == 4
    selected = (selection / "selected.txt").read_text().strip()
    assert selected == runs.loc[runs["selected"], "run_dir"].item()


def test_sweep_cli_rejects_options_of_other_method(tmp_path, tiny_triplets, capsys):
    from dimalign.cli import main

    train, _ = tiny_triplets
    np.save(tmp_path / "triplets.npy", train)
    code = main([
        "sweep", str(tmp_path / "triplets.npy"), "--n-objects", str(N_OBJECTS), "-o", str(tmp_path / "sweep"),
        "--seeds", "1", "--l1", "0.01",
    ])
    assert code == 1
    assert (
        "--l1 applies only to --method spose, but --method is vice: drop --l1 or pass --method spose"
    ) in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def snapshot(directory):
    """Map every file under ``directory`` to its content and modification time."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_sweep_rerun_other_n_dims_rejected(tmp_path, tiny_triplets):
    train, val = tiny_triplets
    sweep(train, val, tmp_path, seeds=[0, 1], n_objects=N_OBJECTS, settings=SETTINGS)
    before = snapshot(tmp_path)

    with pytest.raises(ValueError, match="n_dims") as error:
        sweep(train, val, tmp_path, seeds=[0, 1], n_objects=N_OBJECTS, settings={**SETTINGS, "n_dims": 4})

    message = str(error.value)
    assert str(tmp_path / "runs" / "seed_0" / "manifest.json") in message
    assert "n_dims=8" in message
    assert "n_dims=4" in message
    assert "new output directory" in message
    assert snapshot(tmp_path) == before


# Each case changes one part of the request. The second reruns only seed 1, but
# selection would mix the finished seed 0 with the new run, so seed 0 is checked too.
RERUN_CHANGES = [
    ({"method": "spose", "settings": {"n_dims": 8, "max_epochs": 3}}, "method='spose'"),
    ({"seeds": [1], "settings": {**SETTINGS, "max_epochs": 2}}, "max_epochs"),
    ({"n_objects": N_OBJECTS + 1}, f"n_objects={N_OBJECTS + 1}"),
]


@pytest.mark.parametrize(("change", "message"), RERUN_CHANGES)
def test_sweep_rerun_changed_request_rejected(tmp_path, tiny_triplets, change, message):
    train, val = tiny_triplets
    sweep(train, val, tmp_path, seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)
    before = snapshot(tmp_path)
    request = {"seeds": [0], "n_objects": N_OBJECTS, "settings": SETTINGS, **change}

    with pytest.raises(ValueError, match=message):
        sweep(train, val, tmp_path, **request)
    assert snapshot(tmp_path) == before


def test_sweep_rerun_other_object_names_rejected(tmp_path, tiny_triplets):
    train, val = tiny_triplets
    names = [f"object{i}" for i in range(N_OBJECTS)]
    request = {"seeds": [0], "n_objects": N_OBJECTS, "settings": SETTINGS}
    sweep(train, val, tmp_path, object_table=ObjectTable.from_ids(names), **request)
    before = snapshot(tmp_path)
    renamed = ObjectTable.from_ids(names[:3] + ["zebra"] + names[4:])
    with pytest.raises(ValueError, match="names object 3 'object3', but this sweep's object table names it 'zebra'"):
        sweep(train, val, tmp_path, object_table=renamed, **request)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("changed", ["train", "val"])
def test_sweep_rerun_other_triplets_rejected(tmp_path, tiny_triplets, changed):
    train, val = tiny_triplets
    sweep(train, val, tmp_path, seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)
    before = snapshot(tmp_path)
    if changed == "train":
        train = train[::-1]
    else:
        val = val[:-1]

    expected = "other training triplets" if changed == "train" else "other validation triplets"
    with pytest.raises(ValueError, match=expected) as error:
        sweep(train, val, tmp_path, seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)

    assert str(tmp_path / "runs" / "seed_0") in str(error.value)
    assert snapshot(tmp_path) == before


def test_sweep_checks_saved_triplets_without_runs(tmp_path, tiny_triplets):
    train, val = tiny_triplets
    np.save(tmp_path / "train.npy", train[::-1])
    before = snapshot(tmp_path)

    with pytest.raises(ValueError, match="train.npy contains other training triplets"):
        sweep(train, val, tmp_path, seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)
    assert snapshot(tmp_path) == before


def unfinish(run_dir):
    """Turn a finished run into one that has only its checkpoint, like an interrupted fit."""
    (run_dir / "embedding.npz").unlink()
    (run_dir / "manifest.json").unlink()


def test_sweep_checks_unfinished_run_checkpoint(tmp_path, tiny_triplets):
    train, val = tiny_triplets
    sweep(train, val, tmp_path, seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)
    unfinish(tmp_path / "runs" / "seed_0")
    before = snapshot(tmp_path)

    with pytest.raises(ValueError, match="checkpoint.pt records mc_samples=2"):
        sweep(train, val, tmp_path, seeds=[0], n_objects=N_OBJECTS, settings={**SETTINGS, "mc_samples": 3})
    assert snapshot(tmp_path) == before

    with pytest.raises(ValueError, match="checkpoint.pt was trained on other training triplets"):
        sweep(train[::-1], val, tmp_path, seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)
    assert snapshot(tmp_path) == before


def test_sweep_resumes_with_more_epochs(tmp_path, tiny_triplets):
    train, val = tiny_triplets
    sweep(train, val, tmp_path, seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)
    unfinish(tmp_path / "runs" / "seed_0")

    # max_epochs is not part of the checkpoint's settings, so the run resumes.
    table = sweep(train, val, tmp_path, seeds=[0], n_objects=N_OBJECTS, settings={**SETTINGS, "max_epochs": 4})
    assert table["n_epochs"].tolist() == [4]


def test_fit_seed_rejects_other_settings(tmp_path, tiny_triplets):
    train, val = tiny_triplets
    fit_alone(tmp_path, "run", 0, train, val)
    with pytest.raises(ValueError, match="n_dims"):
        fit_seed(
            method="vice", settings={**SETTINGS, "n_dims": 4}, seed=0,
            train_path=str(tmp_path / "run_train.npy"), val_path=str(tmp_path / "run_val.npy"),
            out_dir=str(tmp_path / "run"), n_objects=N_OBJECTS,
        )


def test_sweep_cli_rerun(tmp_path, tiny_triplets, capsys):
    from dimalign.cli import main

    train, _ = tiny_triplets
    np.save(tmp_path / "triplets.npy", train)
    common = ["sweep", str(tmp_path / "triplets.npy"), "--n-objects", str(N_OBJECTS), "-o", str(tmp_path / "sweep"),
              "--seeds", "2", "--max-epochs", "2"]
    vice = ["--n-dims", "6", "--mc-samples", "2"]
    assert main(common + vice) == 0
    before = snapshot(tmp_path / "sweep")

    # An identical rerun reuses both runs and leaves them as they are.
    assert main(common + vice) == 0
    after = snapshot(tmp_path / "sweep")
    for seed in (0, 1):
        name = f"runs/seed_{seed}/embedding.npz"
        assert after[name] == before[name]
    assert after["sweep.csv"][0] == before["sweep.csv"][0]
    capsys.readouterr()

    # Another method and n_dims in the same directory.
    before = snapshot(tmp_path / "sweep")
    assert main(common + ["--method", "spose", "--n-dims", "4"]) == 1
    error = capsys.readouterr().err
    assert str(tmp_path / "sweep" / "runs" / "seed_0") in error
    assert "method='spose'" in error
    assert snapshot(tmp_path / "sweep") == before

    # Other triplets in the same directory.
    np.save(tmp_path / "other.npy", train[::-1])
    other = ["sweep", str(tmp_path / "other.npy")] + common[2:]
    assert main(other + vice) == 1
    assert "other training triplets" in capsys.readouterr().err
    assert snapshot(tmp_path / "sweep") == before


def test_select_reads_recorded_seeds(tmp_path):
    base = np.maximum(np.random.default_rng(9).normal(size=(12, 2)), 0.0)
    write_run(tmp_path / "runs" / "seed_0", base, 0.5, seed=0)
    # A copied run keeps its recorded seed, whatever its folder is called.
    write_run(tmp_path / "permrun", base[:, ::-1], 0.5, seed=7)
    # Scaled weights, because select rejects runs with identical embeddings as copies.
    save_embedding(EmbeddingResult(embedding=2 * base), tmp_path / "runs" / "seed_2")
    (tmp_path / "runs" / "seed_2" / "config.toml").write_text('[settings]\nrandom_state = 2\n')
    # config.toml writes an unset random_state as "", so this run has no seed.
    save_embedding(EmbeddingResult(embedding=2 * base[:, ::-1]), tmp_path / "unseeded")
    (tmp_path / "unseeded" / "config.toml").write_text('[settings]\nrandom_state = ""\n')
    runs = [tmp_path / "runs" / "seed_0", tmp_path / "permrun", tmp_path / "runs" / "seed_2", tmp_path / "unseeded"]

    selection = select_run(runs, tmp_path / "out")

    assert selection.runs["seed"].tolist()[:3] == [0, 7, 2]
    assert selection.runs["seed"].isna().tolist() == [False, False, False, True]
    lines = (tmp_path / "out" / "runs.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["seed", "0", "7", "2", ""]
    dimensions = (tmp_path / "out" / "dimensions.csv").read_text().splitlines()
    assert dimensions[1].split(",")[1] == "0"


def test_sweep_names_empty_validation_file(tmp_path, tiny_triplets, capsys):
    from dimalign.cli import main

    train, _ = tiny_triplets
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "empty.npy", train[:0])
    out = tmp_path / "sweep"
    code = main(["sweep", str(tmp_path / "train.npy"), "--val", str(tmp_path / "empty.npy"),
                 "--n-objects", str(N_OBJECTS), "-o", str(out), "--seeds", "1"])
    assert code == 1
    error = capsys.readouterr().err
    assert f"the validation file {tmp_path / 'empty.npy'} contains no triplets" in error
    assert "--val-fraction" not in error
    assert error.count("contains no triplets") == 1
    assert not out.exists()


def test_sweep_cli_passes_prior_options(tmp_path, tiny_triplets):
    """--pi, --spike, --slab, --beta and --min-objects reach every seed's VICE, as in dimalign fit."""
    import tomllib

    from dimalign.cli import main

    train, _ = tiny_triplets
    np.save(tmp_path / "triplets.npy", train)
    code = main([
        "sweep", str(tmp_path / "triplets.npy"), "--n-objects", str(N_OBJECTS), "-o", str(tmp_path / "sweep"),
        "--seeds", "1", "--n-dims", "4", "--max-epochs", "1", "--mc-samples", "2",
        "--pi", "0.4", "--spike", "0.2", "--slab", "1.5", "--beta", "0.5", "--min-objects", "2",
    ])

    assert code == 0
    config = tomllib.loads((tmp_path / "sweep" / "runs" / "seed_0" / "config.toml").read_text())
    assert config["settings"]["pi"] == 0.4
    assert config["settings"]["spike"] == 0.2
    assert config["settings"]["slab"] == 1.5
    assert config["settings"]["beta"] == 0.5
    assert config["settings"]["min_objects"] == 2


def test_sweep_cli_rejects_prior_options_for_spose(tmp_path, tiny_triplets, capsys):
    from dimalign.cli import main

    train, _ = tiny_triplets
    np.save(tmp_path / "triplets.npy", train)
    code = main([
        "sweep", str(tmp_path / "triplets.npy"), "--n-objects", str(N_OBJECTS), "-o", str(tmp_path / "sweep"),
        "--seeds", "1", "--method", "spose", "--beta", "0.5",
    ])

    assert code == 1
    assert (
        "--beta applies only to --method vice, but --method is spose: drop --beta or pass --method vice"
    ) in capsys.readouterr().err


def test_find_runs_excludes_run_of_other_settings(tmp_path, tiny_triplets):
    import shutil

    train, val = tiny_triplets
    sweep(train, val, tmp_path / "a", seeds=[0, 1, 2], n_objects=N_OBJECTS, settings=SETTINGS)
    sweep(train, val, tmp_path / "b", seeds=[7], n_objects=N_OBJECTS, settings={**SETTINGS, "max_epochs": 2})
    shutil.copytree(tmp_path / "b" / "runs" / "seed_7", tmp_path / "a" / "runs" / "seed_9")
    sweep(train[:300], val, tmp_path / "c", seeds=[8], n_objects=N_OBJECTS, settings=SETTINGS)
    shutil.copytree(tmp_path / "c" / "runs" / "seed_8", tmp_path / "a" / "runs" / "seed_8")

    with pytest.warns(UserWarning) as record:
        runs = find_runs(tmp_path / "a")
    assert [path.name for path in runs] == ["seed_0", "seed_1", "seed_2"]
    messages = "\n".join(str(warning.message) for warning in record)
    assert "excluded 2 runs" in messages
    assert "seed_9: " in messages
    assert "max_epochs=2" in messages
    assert "seed_8: " in messages
    assert "other training triplets" in messages


@pytest.mark.parametrize("n_kept", [0, 1])
def test_find_runs_counts_excluded_runs_in_error(tmp_path, tiny_triplets, n_kept):
    # Runs that differ from the sweep's manifest are finished, so the error
    # for too few runs of this sweep names them instead of "no finished run".
    train, val = tiny_triplets
    sweep(train, val, tmp_path, seeds=[0, 1], n_objects=N_OBJECTS, settings=SETTINGS)
    for seed in range(2 - n_kept):
        manifest_path = tmp_path / "runs" / f"seed_{seed}" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["settings"]["lr"] = 0.5
        manifest_path.write_text(json.dumps(manifest))

    with pytest.warns(UserWarning, match="excluded"):
        with pytest.raises(FileNotFoundError) as error:
            find_runs(tmp_path)
    message = str(error.value)
    assert f"{2 - n_kept} finished runs that differ from" in message
    assert "no finished run (" not in message


def test_find_runs_rejects_repeated_seed(tmp_path, tiny_triplets):
    import shutil

    train, val = tiny_triplets
    sweep(train, val, tmp_path, seeds=[0, 1], n_objects=N_OBJECTS, settings=SETTINGS)
    shutil.copytree(tmp_path / "runs" / "seed_0", tmp_path / "runs" / "seed_5")
    with pytest.raises(ValueError, match=r"runs .*seed_0 and .*seed_5 both record seed 0"):
        find_runs(tmp_path)


def test_select_warnings_name_runs_by_path(tmp_path):
    base = np.maximum(np.random.default_rng(7).normal(size=(12, 2)), 0.0)
    write_run(tmp_path / "a", base, 0.5)
    write_run(tmp_path / "b", base[:, ::-1], 0.5)
    write_run(tmp_path / "empty", np.zeros((12, 0)), 0.5)
    with pytest.warns(UserWarning, match=r"runs \[.*empty'\] kept 0 dimensions") as caught:
        select_run([tmp_path / "a", tmp_path / "b", tmp_path / "empty"], tmp_path / "out")
    # The warnings come from reproducibility and select_run's helpers, but name the caller.
    assert {warning.filename for warning in caught} == {__file__}


def test_select_cli_seed_needs_random_split(tmp_path, capsys):
    from dimalign.cli import main

    base = np.maximum(np.random.default_rng(7).normal(size=(12, 2)), 0.0)
    for seed in (0, 1):
        write_run(tmp_path / "runs" / f"seed_{seed}", base[:, ::(-1) ** seed], 0.5, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["select", str(tmp_path), "--seed", "7"]) == 1
        assert "--seed 7 only seeds --split random" in capsys.readouterr().err
        assert main(["select", str(tmp_path), "--split", "random", "--seed", "-1"]) == 1
        assert "--seed -1 is invalid: use 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "selection").exists()


def test_select_copy_of_broken_link_fails_cleanly(tmp_path, capsys):
    from dimalign.cli import main

    base = np.maximum(np.random.default_rng(7).normal(size=(12, 2)), 0.0)
    for seed in (0, 1):
        write_run(tmp_path / "runs" / f"seed_{seed}", base[:, ::(-1) ** seed], 0.5, seed=seed)
        (tmp_path / "runs" / f"seed_{seed}" / "notes.txt").symlink_to(tmp_path / "missing.txt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["select", str(tmp_path), "--copy"]) == 1
    error = capsys.readouterr().err
    assert "notes.txt" in error
    assert "[(" not in error
    assert not (tmp_path / "selection" / ".selected_run.tmp").exists()


def test_sweep_table_run_dirs_are_absolute(tmp_path, tiny_triplets, monkeypatch):
    train, val = tiny_triplets
    monkeypatch.chdir(tmp_path)
    table = sweep(train, val, "relative", seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)
    expected = str((tmp_path / "relative" / "runs" / "seed_0").resolve())
    assert table["run_dir"].tolist() == [expected]
    assert pd.read_csv(tmp_path / "relative" / "sweep.csv")["run_dir"].tolist() == [expected]


def write_two_runs(tmp_path, seed=11):
    """Write runs ``a`` and ``b`` of 12 objects whose dimensions are a permutation of each other."""
    base = np.maximum(np.random.default_rng(seed).normal(size=(12, 2)), 0.0)
    write_run(tmp_path / "a", base, 0.5, seed=0)
    write_run(tmp_path / "b", base[:, ::-1], 0.5, seed=1)
    return [tmp_path / "a", tmp_path / "b"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError])
def test_select_stopped_rerun_keeps_earlier_output(tmp_path, monkeypatch, stop):
    import dimalign.analysis.selection as selection_module

    runs = write_two_runs(tmp_path)
    out = tmp_path / "out"
    select_run(runs, out, copy_selected=True)
    before = snapshot(out)

    def stopped_copy(source, target):
        raise stop("stopped while copying the chosen run")

    monkeypatch.setattr(selection_module, "_copy_run", stopped_copy)
    with pytest.raises(stop):
        select_run(runs, out, split="random", random_state=3, copy_selected=True)
    assert snapshot(out) == before
    assert not list(out.glob(".partial-*"))


def test_select_rejects_folder_named_like_output(tmp_path):
    runs = write_two_runs(tmp_path)
    select_run(runs, tmp_path / "out")
    (tmp_path / "out" / "runs.csv").unlink()
    (tmp_path / "out" / "runs.csv").mkdir()
    before = snapshot(tmp_path / "out")
    with pytest.raises(FileExistsError, match=r"out/runs.csv is a folder, but select writes a file there"):
        select_run(runs, tmp_path / "out")
    assert snapshot(tmp_path / "out") == before
    assert (tmp_path / "out" / "runs.csv").is_dir()


@pytest.mark.parametrize("name", ["runs.csv", "selected.txt", "selected_run/notes.txt"])
def test_select_keeps_user_file_of_output_name(tmp_path, name):
    runs = write_two_runs(tmp_path)
    user_file = tmp_path / "out" / name
    user_file.parent.mkdir(parents=True)
    user_file.write_text("the user's own data\n")
    with pytest.raises(FileExistsError, match="contains no earlier dimalign select output"):
        select_run(runs, tmp_path / "out")
    assert user_file.read_text() == "the user's own data\n"
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, tiny_triplets):
    """A finished sweep of seeds 0, 1 and 2, to copy before changing it."""
    train, val = tiny_triplets
    folder = tmp_path_factory.mktemp("finished") / "sweep"
    sweep(train, val, folder, seeds=[0, 1, 2], n_objects=N_OBJECTS, settings=SETTINGS)
    return folder


def copy_sweep(finished_sweep, tmp_path):
    import shutil

    return Path(shutil.copytree(finished_sweep, tmp_path / "sweep"))


def replace_embedding(run_dir):
    """Overwrite a run's embedding.npz with other valid weights, as an edit after the fit would."""
    weights = np.random.default_rng(12).random((N_OBJECTS, 3))
    (run_dir / "embedding.npz").unlink()
    save_embedding(EmbeddingResult(embedding=weights), run_dir)


def test_fit_manifest_records_file_checksums(finished_sweep):
    from dimalign.io.files import sha256_file

    run_dir = finished_sweep / "runs" / "seed_0"
    recorded = json.loads((run_dir / "manifest.json").read_text())["outputs"]["file_sha256"]
    assert recorded == {
        name: sha256_file(run_dir / name) for name in ("embedding.npz", "config.toml", "objects.tsv")
        if (run_dir / name).is_file()
    }
    assert set(recorded) >= {"embedding.npz", "config.toml"}


def test_find_runs_excludes_changed_embedding(finished_sweep, tmp_path):
    folder = copy_sweep(finished_sweep, tmp_path)
    replace_embedding(folder / "runs" / "seed_2")
    with pytest.warns(UserWarning, match=r"excluded 1 runs .*seed_2: .*seed_2/embedding.npz does not match the sha256"):
        runs = find_runs(folder)
    assert [path.name for path in runs] == ["seed_0", "seed_1"]


def test_select_rejects_changed_run_by_path(finished_sweep, tmp_path):
    folder = copy_sweep(finished_sweep, tmp_path)
    (folder / "runs" / "seed_1" / "config.toml").write_text('estimator = "vice"\n')
    runs = [folder / "runs" / "seed_0", folder / "runs" / "seed_1"]
    with pytest.raises(ValueError, match=r"seed_1/config.toml does not match the sha256 that .*seed_1/manifest.json records"):
        select_run(runs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sweep_rerun_rejects_changed_run(finished_sweep, tmp_path, tiny_triplets):
    train, val = tiny_triplets
    folder = copy_sweep(finished_sweep, tmp_path)
    replace_embedding(folder / "runs" / "seed_1")
    before = snapshot(folder)
    with pytest.raises(ValueError, match=r"seed_1/embedding.npz does not match the sha256 .*remove .*seed_1 to fit that seed again"):
        sweep(train, val, folder, seeds=[0, 1, 2], n_objects=N_OBJECTS, settings=SETTINGS)
    assert snapshot(folder) == before


def fit_beside(finished_sweep, tmp_path, seed, settings=SETTINGS, train=None):
    """Fit one run outside the sweep, on the sweep's triplets unless ``train`` is given."""
    train_path = finished_sweep / "train.npy"
    if train is not None:
        train_path = tmp_path / "other_train.npy"
        np.save(train_path, train)
    out = tmp_path / f"beside_{seed}"
    fit_seed(
        method="vice", settings=settings, seed=seed, train_path=str(train_path),
        val_path=str(finished_sweep / "val.npy"), out_dir=str(out), n_objects=N_OBJECTS,
    )
    return out


@pytest.mark.parametrize(("change", "message"), [
    ({"settings": {**SETTINGS, "max_epochs": 2}}, r"records max_epochs=3, .*records max_epochs=2"),
    ({"train_rows": 300}, r"records other training triplets"),
])
def test_select_rejects_unlike_runs_by_path(finished_sweep, tmp_path, tiny_triplets, change, message):
    train, _ = tiny_triplets
    settings = change.get("settings", SETTINGS)
    other_train = train[: change["train_rows"]] if "train_rows" in change else None
    other = fit_beside(finished_sweep, tmp_path, 5, settings=settings, train=other_train)
    runs = [finished_sweep / "runs" / "seed_0", finished_sweep / "runs" / "seed_1", other]
    with pytest.raises(ValueError, match=message) as error:
        select_run(runs, tmp_path / "out")
    assert f"runs {runs[0]} and {other} were fitted differently" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_select_rejects_repeated_seed_by_path(finished_sweep, tmp_path):
    import shutil

    copy = Path(shutil.copytree(finished_sweep / "runs" / "seed_1", tmp_path / "copy"))
    runs = [finished_sweep / "runs" / "seed_0", finished_sweep / "runs" / "seed_1", copy]
    with pytest.raises(ValueError, match=r"runs .*seed_1 and .*copy both record seed 1"):
        select_run(runs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_select_warns_about_uncompared_runs(finished_sweep, tmp_path):
    plain = tmp_path / "plain.npy"
    np.save(plain, load_embedding(finished_sweep / "runs" / "seed_2").embedding)
    runs = [finished_sweep / "runs" / "seed_0", finished_sweep / "runs" / "seed_1", plain]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            select_run(runs, tmp_path / "out")
        except ValueError as error:
            # Three epochs may prune every run to 0 dimensions, which leaves nothing to select.
            assert "no run has any dimension" in str(error)
    messages = [str(warning.message) for warning in record]
    assert any(f"{plain}" in text and "no manifest.json of dimalign fit" in text for text in messages)


def test_select_rejects_output_inside_run(tmp_path):
    runs = write_two_runs(tmp_path)
    with pytest.raises(ValueError, match=r"the output folder .*a/selection is inside the run .*a"):
        select_run(runs, tmp_path / "a" / "selection", copy_selected=True)
    assert not (tmp_path / "a" / "selection").exists()


def test_select_rejects_run_inside_replaced_copy(tmp_path):
    runs = write_two_runs(tmp_path)
    select_run(runs, tmp_path / "out", copy_selected=True)
    write_run(tmp_path / "c", load_embedding(tmp_path / "a").embedding[:, ::-1], 0.5, seed=2)
    before = snapshot(tmp_path / "out")
    copied = tmp_path / "out" / "selected_run"
    with pytest.raises(ValueError, match=r"run .*out/selected_run is .*the copy of the chosen run that select replaces"):
        select_run([copied, tmp_path / "c"], tmp_path / "out")
    assert snapshot(tmp_path / "out") == before


def test_select_copy_rejects_embedding_files(tmp_path):
    base = np.maximum(np.random.default_rng(13).normal(size=(12, 2)), 0.0)
    np.save(tmp_path / "a.npy", base)
    np.save(tmp_path / "b.npy", base[:, ::-1])
    with pytest.raises(ValueError, match=r"--copy copies a run directory, but .*a.npy is a file"):
        select_run([tmp_path / "a.npy", tmp_path / "b.npy"], tmp_path / "out", copy_selected=True)
    assert not (tmp_path / "out").exists()


def test_select_skips_run_being_fitted(tmp_path):
    from dimalign.io.files import exclusive_lock

    base = np.maximum(np.random.default_rng(14).normal(size=(12, 3)), 0.0)
    for seed in (0, 1, 2):
        write_run(tmp_path / "runs" / f"seed_{seed}", np.roll(base, seed, axis=1), 0.5, seed=seed)
    busy = tmp_path / "runs" / "seed_2"
    with exclusive_lock(busy / ".fit.lock", "busy"):
        with pytest.warns(UserWarning, match=r"skipped 1 runs .*seed_2 \(a fit is writing it, .*\.fit\.lock is locked\)") as caught:
            runs = find_runs(tmp_path)
        # A sweep rerun would stop at the locked run, so the advice is to wait.
        message = str(caught[0].message)
        assert "Wait for the fits that are writing 1 of them" in message
        assert "dimalign sweep" not in message
        assert [path.name for path in runs] == ["seed_0", "seed_1"]
        with pytest.raises(ValueError, match=r"run .*seed_2 is being written by a fit"):
            select_run([tmp_path / "runs" / "seed_0", busy], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # A lock file left by a killed fit is not held, so the run counts again.
    (busy / ".fit.lock").touch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert len(find_runs(tmp_path)) == 3


def test_select_cli_names_damaged_val_file(tmp_path, capsys):
    from dimalign.cli import main

    base = np.maximum(np.random.default_rng(15).normal(size=(12, 2)), 0.0)
    for seed in (0, 1):
        write_run(tmp_path / "runs" / f"seed_{seed}", base[:, ::(-1) ** seed], 0.5, seed=seed)
    (tmp_path / "val.npy").write_text("not an array\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["select", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert f"{tmp_path / 'val.npy'} cannot be read as the sweep's validation triplets" in error
    assert "allow_pickle" not in error
    assert not (tmp_path / "selection").exists()


def test_select_names_sweep_given_as_run(tmp_path):
    runs = write_two_runs(tmp_path)
    (tmp_path / "sweep" / "runs").mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(ValueError, match=r"sweep is a sweep directory, not a run: select one sweep at a time"):
            select_run([runs[0], tmp_path / "sweep"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"run .*missing not found"):
        select_run([runs[0], tmp_path / "missing"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "kind"), [("runs", "file"), ("train.npy", "folder"), ("sweep.csv", "folder")])
def test_sweep_rejects_path_in_the_way(tmp_path, tiny_triplets, name, kind):
    train, val = tiny_triplets
    out = tmp_path / "sweep"
    out.mkdir()
    if kind == "file":
        (out / name).write_text("")
    else:
        (out / name).mkdir()
    with pytest.raises(FileExistsError, match=rf"{out / name} is a {kind}, but sweep"):
        sweep(train, val, out, seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)
    assert [path.name for path in out.iterdir()] == [name]


def test_sweep_rejects_negative_seed_before_fitting(tmp_path, tiny_triplets):
    train, val = tiny_triplets
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match=r"seed -1 is invalid: random_state must be at least 0"):
        sweep(train, val, out, seeds=[0, -1], n_objects=N_OBJECTS, settings=SETTINGS)
    assert not out.exists()


def test_select_rejects_unfinished_run_as_output(tmp_path):
    runs = write_two_runs(tmp_path)
    unfinished = tmp_path / "runs" / "seed_9"
    unfinished.mkdir(parents=True)
    (unfinished / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"seed_9 contains checkpoint.pt, so it is a run directory"):
        select_run(runs, unfinished)
    assert [path.name for path in unfinished.iterdir()] == ["checkpoint.pt"]


def test_select_rejects_run_given_as_folder_and_file(tmp_path):
    runs = write_two_runs(tmp_path)
    with pytest.raises(ValueError, match=r"run .*a/embedding.npz is given twice \(also as .*a\)"):
        select_run([runs[0], runs[1], tmp_path / "a" / "embedding.npz"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_select_rejects_identical_embeddings(tmp_path):
    runs = write_two_runs(tmp_path)
    np.save(tmp_path / "export.npy", load_embedding(runs[1]).embedding)
    with pytest.raises(ValueError, match=r"runs .*b and .*export.npy have identical embeddings"):
        select_run([*runs, tmp_path / "export.npy"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_select_rerun_copy_drops_earlier_copy_files(tmp_path):
    runs = write_two_runs(tmp_path)
    select_run(runs, tmp_path / "out", copy_selected=True)
    earlier_only = tmp_path / "out" / "selected_run" / "tensorboard" / "events.txt"
    earlier_only.parent.mkdir()
    earlier_only.write_text("from the earlier copy\n")
    selection = select_run(runs, tmp_path / "out", copy_selected=True)
    copy = tmp_path / "out" / "selected_run"
    assert not earlier_only.parent.exists()
    assert sorted(path.name for path in copy.iterdir()) == sorted(
        path.name for path in selection.selected_run.iterdir()
    )
    assert not list((tmp_path / "out").glob(".partial-*"))


def test_select_compares_runs_of_sweep_without_manifest(finished_sweep, tmp_path):
    folder = copy_sweep(finished_sweep, tmp_path)
    (folder / "manifest.json").unlink()
    manifest_path = folder / "runs" / "seed_1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["settings"]["lr"] = 0.5
    manifest_path.write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="has no manifest.json of dimalign sweep"):
        runs = find_runs(folder)
    with pytest.raises(ValueError, match=r"seed_0 and .*seed_1 were fitted differently: .*records lr=0.001, .*records lr=0.5"):
        select_run(runs, tmp_path / "out")


def test_sweep_failure_empties_existing_folder(tmp_path, tiny_triplets, monkeypatch):
    import dimalign.embedding.runs as runs_module

    def fail(*args):
        raise RuntimeError("seed 0 diverged")

    monkeypatch.setattr(runs_module, "_fit_and_save", fail)
    train, val = tiny_triplets
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "notes.txt").write_text("the user's notes\n")

    with pytest.raises(RuntimeError, match="seed 0 failed"):
        sweep(train, val, out, seeds=[0], n_objects=N_OBJECTS, settings=SETTINGS)

    # The triplets stay only with a run to resume, so a corrected rerun is not held to them.
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]


def test_select_cli_points_runs_folder_to_sweep(tmp_path, capsys):
    from dimalign.cli import main

    base = np.maximum(np.random.default_rng(16).normal(size=(12, 2)), 0.0)
    for seed in (0, 1):
        write_run(tmp_path / "runs" / f"seed_{seed}", base[:, ::(-1) ** seed], 0.5, seed=seed)
    assert main(["select", str(tmp_path / "runs")]) == 1
    assert f"{tmp_path / 'runs'} is the runs folder of a sweep: pass the sweep directory {tmp_path}" in capsys.readouterr().err


def test_select_reads_seed_of_embedding_file_in_run(tmp_path):
    runs = write_two_runs(tmp_path)
    selection = select_run([runs[0] / "embedding.npz", runs[1]], tmp_path / "out")
    assert selection.runs["seed"].tolist() == [0, 1]
    assert selection.runs["val_accuracy"].tolist() == [0.5, 0.5]


def test_sweep_stopped_rerun_keeps_table_and_manifest(finished_sweep, tmp_path, tiny_triplets, monkeypatch):
    import dimalign.analysis.sweep as sweep_module

    train, val = tiny_triplets
    folder = copy_sweep(finished_sweep, tmp_path)
    table_before = (folder / "sweep.csv").read_bytes()
    manifest_before = (folder / "manifest.json").read_bytes()

    def stopped_manifest(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_module, "write_manifest", stopped_manifest)
    with pytest.raises(KeyboardInterrupt):
        sweep(train, val, folder, seeds=[0, 1, 2, 3], n_objects=N_OBJECTS, settings=SETTINGS)
    # sweep.csv and manifest.json describe the same seeds: the earlier ones.
    assert (folder / "sweep.csv").read_bytes() == table_before
    assert (folder / "manifest.json").read_bytes() == manifest_before
    assert (folder / "runs" / "seed_3" / "manifest.json").is_file()
    assert not list(folder.glob(".partial-*"))


def test_sweep_reports_leftover_hidden_folder(finished_sweep, tmp_path, tiny_triplets, caplog):
    train, val = tiny_triplets
    folder = copy_sweep(finished_sweep, tmp_path)
    (folder / ".partial-killed").mkdir()
    with caplog.at_level(logging.WARNING, logger="dimalign.io.files"):
        sweep(train, val, folder, seeds=[0, 1, 2], n_objects=N_OBJECTS, settings=SETTINGS)
    assert ".partial-killed" in caplog.text


def test_select_help_names_run_inputs():
    import argparse

    from dimalign.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    actions = {action.dest: action for action in commands.choices["select"]._actions}
    # select_run also scores embedding files, and needs -o for runs given by path.
    assert "embedding files" in actions["runs"].help
    assert "required for runs given by path" in actions["out"].help


def test_too_few_runs_names_unfinished(tmp_path):
    from dimalign.io.files import exclusive_lock

    base = np.maximum(np.random.default_rng(15).normal(size=(12, 3)), 0.0)
    for seed in (0, 1):
        write_run(tmp_path / "runs" / f"seed_{seed}", np.roll(base, seed, axis=1), 0.5, seed=seed)
    busy = tmp_path / "runs" / "seed_1"
    with exclusive_lock(busy / ".fit.lock", "busy"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # With only one other run finished, more seeds are not the only way out: the fit may just end.
        with pytest.raises(FileNotFoundError, match=r"It also has 1 unfinished run \(see the warning\)"):
            find_runs(tmp_path)


def test_selection_names_import_from_sweep():
    """Code written before the selection got its own module imports it from the sweep module."""
    import dimalign.analysis.selection as selection_module
    import dimalign.analysis.sweep as sweep_module
    from dimalign.analysis.sweep import Selection as OldSelection
    from dimalign.analysis.sweep import find_runs as old_find_runs
    from dimalign.analysis.sweep import select_run as old_select_run

    assert OldSelection is selection_module.Selection
    assert old_find_runs is selection_module.find_runs
    assert old_select_run is selection_module.select_run
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        getattr(sweep_module, "missing")


def test_sweep_and_select_print_result(tmp_path, tiny_triplets, capsys):
    from dimalign.cli import main

    train, _ = tiny_triplets
    np.save(tmp_path / "train.npy", train)
    out = tmp_path / "sweep"
    for quiet in ([], ["-q"]):
        assert main([*quiet, "sweep", str(tmp_path / "train.npy"), "--n-objects", str(N_OBJECTS), "-o", str(out),
                     "--seed-list", "0", "1", "--n-dims", "4", "--max-epochs", "2", "--mc-samples", "2"]) == 0
        table = pd.read_csv(out / "sweep.csv")
        low, high = table["n_dims"].min(), table["n_dims"].max()
        dims = f"{high} dimensions" if low == high else f"{low} to {high} dimensions"
        assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out}: 2 runs, {dims}"

        assert main([*quiet, "select", str(out)]) == 0
        manifest = json.loads((out / "selection" / "manifest.json").read_text())["outputs"]
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"wrote {out / 'selection'}: selected {manifest['selected_run']}, reproducibility "
            f"{manifest['selected_reproducibility']:.3f}, {manifest['selected_n_dims']} dimensions"
        )
