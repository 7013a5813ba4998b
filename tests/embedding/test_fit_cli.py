import json
import tomllib

import numpy as np
import pytest

from dimalign.cli import main


def write_triplets(path, n_objects=12, n_triplets=300, seed=0):
    rng = np.random.default_rng(seed)
    triplets = np.array([rng.choice(n_objects, 3, replace=False) for _ in range(n_triplets)])
    np.save(path, triplets)
    return triplets


def test_fit_cli_writes_run_directory(tmp_path):
    write_triplets(tmp_path / "train.npy")
    status = main([
        "fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"),
        "--n-dims", "4", "--max-epochs", "2", "--seed", "3",
    ])
    assert status == 0
    run = tmp_path / "run"
    for name in ("embedding.npz", "config.toml", "history.csv", "checkpoint.pt", "manifest.json"):
        assert (run / name).is_file(), name
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["settings"]["random_state"] == 3
    assert config["fitted"]["n_epochs"] == 2
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["outputs"]["n_train"] + manifest["outputs"]["n_val"] == 300
    assert "sha256" in manifest["inputs"]["train"]


def test_fit_prints_run_summary(tmp_path, capsys):
    """fit ends with one line on standard output naming the run and its numbers, also with -q."""
    write_triplets(tmp_path / "train.npy")
    run = tmp_path / "run"

    status = main([
        "-q", "fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(run),
        "--n-dims", "4", "--max-epochs", "2",
    ])

    assert status == 0
    manifest = json.loads((run / "manifest.json").read_text())
    fitted = tomllib.loads((run / "config.toml").read_text())["fitted"]
    outputs = manifest["outputs"]
    assert capsys.readouterr().out == (
        f"wrote {run}: {fitted['n_dims']} dimensions kept after 2 epochs (reached max_epochs), "
        f"held-out accuracy {outputs['val_accuracy']:.4f} on {outputs['n_val']} triplets\n"
    )


def test_fit_without_validation_prints_run(tmp_path, capsys):
    """Without validation triplets the line leaves out the held-out accuracy."""
    write_triplets(tmp_path / "train.npy")
    run = tmp_path / "run"

    status = main([
        "fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(run),
        "--n-dims", "4", "--max-epochs", "1", "--val-fraction", "0",
    ])

    assert status == 0
    n_dims = json.loads((run / "manifest.json").read_text())["outputs"]["n_dims"]
    assert capsys.readouterr().out == (
        f"wrote {run}: {n_dims} dimensions kept after 1 epoch (reached max_epochs), no validation triplets\n"
    )


def test_fit_cli_reads_simulate_folder(tmp_path):
    folder = tmp_path / "simulated"
    folder.mkdir()
    write_triplets(folder / "train.npy", seed=1)
    write_triplets(folder / "val.npy", n_triplets=50, seed=2)
    (folder / "objects.tsv").write_text("index\tobject_id\tsource\n" + "".join(f"{i}\tobj{i}\t\n" for i in range(12)))
    assert main(["fit", str(folder), "-o", str(tmp_path / "run"), "--n-dims", "3", "--max-epochs", "1"]) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["outputs"]["n_train"] == 300
    assert manifest["outputs"]["n_val"] == 50
    assert (tmp_path / "run" / "objects.tsv").read_text().splitlines()[1] == "0\tobj0\t"


def test_fit_cli_folder_checks_candidates_and_object_table(tmp_path, capsys):
    folder = tmp_path / "simulated"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    write_triplets(folder / "triplets.npy")
    assert main(["fit", str(folder), "--n-objects", "12", "-o", str(tmp_path / "a"), "--max-epochs", "1"]) == 1
    assert "contains 2 candidate triplet files (train.npy, triplets.npy)" in capsys.readouterr().err

    (folder / "triplets.npy").unlink()
    (folder / "objects.tsv").write_text("index\tobject_id\tsource\n" + "".join(f"{i}\tobj{i}\t\n" for i in range(12)))
    assert main(["fit", str(folder), "--n-objects", "1854", "-o", str(tmp_path / "b"), "--max-epochs", "1"]) == 1
    assert f"--n-objects 1854 disagrees with {folder / 'objects.tsv'}, which lists 12 objects" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_fit_cli_keeps_simulate_folder(tmp_path, capsys):
    folder = tmp_path / "simulated"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    table = "index\tobject_id\tsource\n" + "".join(f"{i}\tobj{i}\t\n" for i in range(12))
    (folder / "objects.tsv").write_text(table)
    (folder / "manifest.json").write_text(json.dumps({"step": "simulate"}))

    status = main(["fit", str(folder), "-o", str(folder), "--n-dims", "3", "--max-epochs", "1"])

    assert status == 1
    assert "already contains the output of dimalign simulate" in capsys.readouterr().err
    assert (folder / "objects.tsv").read_text() == table
    assert json.loads((folder / "manifest.json").read_text()) == {"step": "simulate"}
    assert not (folder / "checkpoint.pt").exists()


def test_fit_cli_without_object_count_fails(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    assert main(["fit", str(tmp_path / "train.npy"), "-o", str(tmp_path / "run")]) == 1
    assert "--n-objects" in capsys.readouterr().err



def test_fit_cli_names_missing_triplet_path(tmp_path, capsys):
    missing = tmp_path / "trainn.npy"
    assert main(["fit", str(missing), "-o", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert f"triplet file or folder {missing} not found" in error
    assert "number of objects is unknown" not in error
    assert not (tmp_path / "run").exists()


def test_fit_cli_names_folder_without_triplet_file(tmp_path, capsys):
    folder = tmp_path / "triplets"
    folder.mkdir()
    assert main(["fit", str(folder), "-o", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert f"no triplet file in {folder}" in error
    assert "number of objects is unknown" not in error
    assert not (tmp_path / "run").exists()

def test_fit_cli_existing_checkpoint_needs_resume(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    arguments = ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"),
                 "--n-dims", "3", "--max-epochs", "1"]
    assert main(arguments) == 0
    assert main(arguments) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(arguments[:-1] + ["2", "--resume"]) == 0


@pytest.mark.parametrize("method", ["vice", "spose"])
def test_fit_cli_methods(tmp_path, method):
    write_triplets(tmp_path / "train.npy")
    assert main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / method),
                 "--method", method, "--n-dims", "3", "--max-epochs", "1"]) == 0
    config = tomllib.loads((tmp_path / method / "config.toml").read_text())
    assert config["estimator"] == method


def test_fit_cli_cuda_without_gpu_leaves_no_folder(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    write_triplets(tmp_path / "train.npy")
    out = tmp_path / "new" / "run"
    status = main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(out),
                   "--n-dims", "3", "--max-epochs", "1", "--device", "cuda"])
    assert status == 1
    error = capsys.readouterr().err
    assert "no CUDA GPU" in error
    assert "use device 'cpu' or 'auto' (CLI: --device cpu)" in error
    assert not (tmp_path / "new").exists()


def test_fit_cli_empty_triplets_leave_no_folder(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    out = tmp_path / "run"
    status = main(["fit", str(tmp_path / "empty.txt"), "--n-objects", "12", "-o", str(out), "--max-epochs", "1"])
    assert status == 1
    assert "empty" in capsys.readouterr().err
    assert not out.exists()


def test_fit_cli_failure_keeps_existing_folder(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    status = main(["fit", str(tmp_path / "empty.txt"), "--n-objects", "12", "-o", str(out), "--max-epochs", "1"])
    assert status == 1
    assert (out / "notes.txt").read_text() == "mine"


def test_fit_cli_resume_of_other_method_names_option(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    run = tmp_path / "run"
    command = ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(run), "--n-dims", "3"]
    assert main(command + ["--method", "spose", "--max-epochs", "1"]) == 0
    capsys.readouterr()

    assert main(command + ["--resume", "--max-epochs", "2"]) == 1
    error = capsys.readouterr().err
    assert f"{run / 'checkpoint.pt'} belongs to a spose run, not vice: resume it with --method spose" in error


def test_fit_cli_names_empty_training_file(tmp_path, capsys):
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), dtype=np.int64))
    out = tmp_path / "run"
    status = main(["fit", str(tmp_path / "empty.npy"), "--n-objects", "12", "-o", str(out), "--max-epochs", "1"])
    assert status == 1
    error = capsys.readouterr().err
    assert (f"dimalign fit: error: {tmp_path / 'empty.npy'} contains no triplets: check that it is the file "
            "of judgements" in error)
    assert error.count("contains no triplets") == 1
    assert not out.exists()


def test_fit_cli_names_empty_validation_file(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    np.save(tmp_path / "val.npy", np.zeros((0, 3), dtype=np.int64))
    out = tmp_path / "run"
    status = main(["fit", str(tmp_path / "train.npy"), "--val", str(tmp_path / "val.npy"), "--n-objects", "12",
                   "-o", str(out), "--max-epochs", "1"])
    assert status == 1
    error = capsys.readouterr().err
    assert f"the validation file {tmp_path / 'val.npy'} contains no triplets, so no held-out accuracy" in error
    assert error.count("contains no triplets") == 1
    assert not out.exists()


def test_fit_cli_names_empty_validation_file_of_folder(tmp_path, capsys):
    folder = tmp_path / "triplets"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    np.save(folder / "val.npy", np.zeros((0, 3), dtype=np.int64))
    status = main(["fit", str(folder), "--n-objects", "12", "-o", str(tmp_path / "run"), "--max-epochs", "1"])
    assert status == 1
    error = capsys.readouterr().err
    assert f"the validation file {folder / 'val.npy'} contains no triplets" in error
    assert (f"or pass the training file {folder / 'train.npy'} with --val-fraction 0 to fit without "
            "validation" in error)


@pytest.mark.parametrize(
    ("n_triplets", "options", "message"),
    [
        (4, [], "--val-fraction 0.1 (the default) holds out no triplet of FILE, since round(0.1 x 4 triplets) "
                "= 0: use at least 0.25, or --val-fraction 0 to fit without validation"),
        (4, ["--val-fraction", "0.05"], "--val-fraction 0.05 holds out no triplet of FILE, since round(0.05 x 4 "
                                        "triplets) = 0"),
        (4, ["--val-fraction", "0.9"], "--val-fraction 0.9 leaves no training triplet of FILE, since round(0.9 x 4 "
                                       "triplets) = 4: use a smaller fraction or more triplets"),
        (1, [], "FILE contains 1 triplet, which cannot be split into training and validation triplets: "
                "pass --val-fraction 0 to fit without validation"),
    ],
)
def test_fit_cli_rejects_split_with_empty_side(tmp_path, capsys, n_triplets, options, message):
    write_triplets(tmp_path / "few.npy", n_triplets=n_triplets)
    out = tmp_path / "run"
    status = main(["fit", str(tmp_path / "few.npy"), "--n-objects", "12", "-o", str(out), "--max-epochs", "1",
                   *options])
    assert status == 1
    error = capsys.readouterr().err
    assert message.replace("FILE", str(tmp_path / "few.npy")) in error
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--val", "VAL", "--val-fraction", "0.2"], "pass only one of them"),
        (["--l1", "0.01"], "--l1 applies only to --method spose"),
        (["--method", "spose", "--pi", "0.3", "--prior", "authors"],
         "--prior, --pi apply only to --method vice"),
        (["--method", "spose", "--spike", "0.1"], "--spike applies only to --method vice"),
        (["--method", "spose", "--slab", "1.0"], "--slab applies only to --method vice"),
        (["--method", "spose", "--beta", "0.5"], "--beta applies only to --method vice"),
    ],
)
def test_fit_cli_contradictory_options_fail(tmp_path, capsys, options, message):
    write_triplets(tmp_path / "train.npy")
    write_triplets(tmp_path / "val.npy", n_triplets=20)
    options = [str(tmp_path / "val.npy") if option == "VAL" else option for option in options]

    status = main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12",
                   "-o", str(tmp_path / "run")] + options)

    assert status == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_fit_cli_val_fraction_with_folder_val_fails(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    write_triplets(tmp_path / "val.npy", n_triplets=20)

    status = main(["fit", str(tmp_path), "--n-objects", "12", "-o", str(tmp_path / "run"),
                   "--val-fraction", "0.2"])

    assert status == 1
    assert "--val-fraction 0.2 would be ignored" in capsys.readouterr().err


def test_fit_cli_split_does_not_follow_seed(tmp_path):
    write_triplets(tmp_path / "train.npy")
    for seed in (1, 2):
        assert main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / f"run{seed}"),
                     "--n-dims", "3", "--max-epochs", "1", "--seed", str(seed)]) == 0
    manifests = [json.loads((tmp_path / f"run{seed}" / "manifest.json").read_text()) for seed in (1, 2)]
    assert manifests[0]["settings"]["validation_split"] == {"val_fraction": 0.1, "split_seed": 0}
    assert manifests[0]["settings"]["n_objects"] == 12
    assert manifests[0]["settings"]["random_state"] == 1

    from dimalign.cli import build_parser
    from dimalign.embedding.commands import load_training_data

    def validation(*options):
        args = build_parser().parse_args(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", "x", *options])
        return load_training_data(args)[1]

    np.testing.assert_array_equal(validation("--seed", "1"), validation("--seed", "2"))
    assert not np.array_equal(validation("--split-seed", "1"), validation("--split-seed", "2"))


def test_fit_cli_beta_reaches_estimator(tmp_path):
    """--beta reaches VICE, so the beta settings compared in docs/embedding.md can be run."""
    write_triplets(tmp_path / "train.npy")

    status = main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"),
                   "--n-dims", "3", "--max-epochs", "1", "--beta", "0.5"])

    assert status == 0
    config = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert config["settings"]["beta"] == 0.5


def test_fit_cli_min_objects_reaches_estimator(tmp_path):
    """The warning about a fit that kept no dimension names --min-objects, so fit must take it."""
    write_triplets(tmp_path / "train.npy")

    status = main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"),
                   "--method", "spose", "--n-dims", "3", "--max-epochs", "1", "--min-objects", "1"])

    assert status == 0
    config = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert config["settings"]["min_objects"] == 1


def test_fit_cli_rejects_min_objects_of_every_object(tmp_path, capsys):
    """With --min-objects at the number of objects no dimension can be kept: an error before fitting."""
    write_triplets(tmp_path / "train.npy")

    status = main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"),
                   "--n-dims", "3", "--max-epochs", "1", "--min-objects", "12"])

    assert status == 1
    assert ("min_objects is 12, but there are only 12 objects, so no dimension could be kept: use at most 11 "
            "(CLI: --min-objects)") in capsys.readouterr().err
    assert not (tmp_path / "run" / "embedding.npy").exists()


def test_fit_cli_reads_import_triplets_folder(tmp_path):
    """The README fits the folder that import-triplets --split writes, objects.tsv included."""
    source = tmp_path / "raw.txt"
    triplets = write_triplets(tmp_path / "raw.npy")
    source.write_text("".join(f"{a} {b} {c}\n" for a, b, c in triplets))
    table = tmp_path / "names.txt"
    table.write_text("".join(f"object{index}\n" for index in range(12)))
    assert main(["import-triplets", str(source), "--objects", str(table), "--split", "0.1",
                 "-o", str(tmp_path / "imported")]) == 0

    status = main(["fit", str(tmp_path / "imported"), "-o", str(tmp_path / "run"), "--n-dims", "3", "--max-epochs", "1"])

    assert status == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["outputs"]["n_val"] == len(np.load(tmp_path / "imported" / "val.npy"))
    assert manifest["settings"]["n_objects"] == 12


@pytest.mark.parametrize("options, expected", [([], 1), (["--threads", "2"], 2)])
def test_fit_cli_torch_threads(tmp_path, monkeypatch, options, expected):
    """fit runs with one torch thread unless --threads sets another count, and restores the count."""
    import torch

    import dimalign.embedding

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    seen = []
    fit_run = dimalign.embedding.fit_run

    def fit_run_counting_threads(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return fit_run(*args, **kwargs)

    monkeypatch.setattr(dimalign.embedding, "fit_run", fit_run_counting_threads)
    write_triplets(tmp_path / "train.npy")
    before = torch.get_num_threads()

    status = main(
        ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"),
         "--n-dims", "3", "--max-epochs", "1"] + options
    )

    assert status == 0
    assert seen == [expected]
    assert torch.get_num_threads() == before


def test_fit_cli_rejects_zero_threads(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    with pytest.raises(SystemExit):
        main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"), "--threads", "0"])
    assert "argument --threads: 0 is invalid: use 1 or more" in capsys.readouterr().err



def test_fit_cli_rejects_non_integer_threads(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    with pytest.raises(SystemExit):
        main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"), "--threads", "x"])
    error = capsys.readouterr().err
    assert "argument --threads: 'x' is not an integer: use 1 or more" in error
    assert "_thread_count" not in error

def test_fit_cli_rejects_more_threads_than_cpus(tmp_path, monkeypatch, capsys):
    """Threads beyond the CPUs slow a fit down, and a count such as 100000 crashes the process."""
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    write_triplets(tmp_path / "train.npy")
    with pytest.raises(SystemExit):
        main([
            "fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"),
            "--threads", "5",
        ])
    error = capsys.readouterr().err
    assert "argument --threads: 5 is invalid: this machine has 4 CPUs, so use 1 to 4" in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_fit_cli_keeps_result_without_checkpoint(tmp_path, capsys, resume):
    write_triplets(tmp_path / "train.npy")
    out = tmp_path / "run"
    arguments = ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(out),
                 "--n-dims", "3", "--max-epochs", "1"]
    assert main(arguments) == 0
    (out / "checkpoint.pt").unlink()
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    assert main(arguments + resume) == 1

    assert "contains a fitted embedding (embedding.npz) but no checkpoint.pt" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_fit_cli_failed_save_leaves_run_unfinished(tmp_path, monkeypatch, capsys):
    import dimalign.embedding.base

    write_triplets(tmp_path / "train.npy")
    out = tmp_path / "run"
    arguments = ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(out),
                 "--n-dims", "3", "--resume", "--max-epochs"]
    assert main(arguments + ["1"]) == 0
    names = ("embedding.npz", "config.toml", "history.csv", "manifest.json")
    earlier = {name: (out / name).read_bytes() for name in names}
    real_write_text_atomic = dimalign.embedding.base.write_text_atomic

    def disk_full_at_history(path, text):
        if str(path).endswith("history.csv"):
            raise OSError(28, "No space left on device")
        return real_write_text_atomic(path, text)

    monkeypatch.setattr(dimalign.embedding.base, "write_text_atomic", disk_full_at_history)
    assert main(arguments + ["2"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    # The files of epoch 1 are put back whole, so that no file of epoch 2 stays next to them.
    for name in names:
        assert (out / name).read_bytes() == earlier[name], name
    assert not list(out.glob(".partial-*"))

    monkeypatch.setattr(dimalign.embedding.base, "write_text_atomic", real_write_text_atomic)
    assert main(arguments + ["2"]) == 0
    assert json.loads((out / "manifest.json").read_text())["outputs"]["n_epochs"] == 2


def test_fit_cli_rejects_folder_of_running_fit(tmp_path, capsys):
    from dimalign.io.files import exclusive_lock

    write_triplets(tmp_path / "train.npy")
    out = tmp_path / "run"
    out.mkdir()
    arguments = ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(out),
                 "--n-dims", "3", "--max-epochs", "1"]
    with exclusive_lock(out / ".fit.lock", "held by this test"):
        assert main(arguments) == 1
        assert "is in use by another fit" in capsys.readouterr().err
        assert sorted(path.name for path in out.iterdir()) == [".fit.lock"]
    assert main(arguments) == 0
    assert not (out / ".fit.lock").exists()


def test_fit_cli_resume_with_other_objects_rejected(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    for name, prefix in (("objects.txt", "object"), ("other.txt", "item")):
        (tmp_path / name).write_text("".join(f"{prefix}{index}\n" for index in range(12)))
    out = tmp_path / "run"
    arguments = ["fit", str(tmp_path / "train.npy"), "-o", str(out), "--n-dims", "3", "--max-epochs"]
    assert main(arguments + ["1", "--objects", str(tmp_path / "objects.txt")]) == 0
    saved = (out / "objects.tsv").read_bytes()

    assert main(arguments + ["2", "--resume", "--objects", str(tmp_path / "other.txt")]) == 1

    assert "names row 0 'object0', this fit's object table 'item0'" in capsys.readouterr().err
    assert (out / "objects.tsv").read_bytes() == saved
    assert main(arguments + ["2", "--resume", "--objects", str(tmp_path / "objects.txt")]) == 0


def test_fit_cli_removes_temporary_files_of_killed_fit(tmp_path):
    write_triplets(tmp_path / "train.npy")
    out = tmp_path / "run"
    arguments = ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(out),
                 "--n-dims", "3", "--resume", "--max-epochs"]
    assert main(arguments + ["1"]) == 0
    # What SIGKILL during the writes of checkpoint.pt and manifest.json leaves behind.
    (out / ".checkpoint.k2j3x9.tmp.pt").write_bytes(b"half a checkpoint")
    (out / ".manifest.a8f1q0.tmp.json").write_text("{")
    (out / ".notes.txt").write_text("mine")

    assert main(arguments + ["2"]) == 0

    assert sorted(path.name for path in out.glob(".*")) == [".notes.txt"]


@pytest.mark.parametrize("name", ["config.toml", "history.csv"])
def test_fit_cli_keeps_user_file_of_output_name(tmp_path, capsys, name):
    write_triplets(tmp_path / "train.npy")
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("the user's own notes\n")

    status = main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(out),
                   "--n-dims", "3", "--max-epochs", "1"])

    assert status == 1
    error = capsys.readouterr().err
    assert f"{out / name} exists, but {out} contains no earlier dimalign fit output" in error
    assert (out / name).read_text() == "the user's own notes\n"
    assert sorted(path.name for path in out.iterdir()) == [name]


@pytest.mark.parametrize(
    "name", ["checkpoint.pt", "embedding.npz", "config.toml", "history.csv", "objects.tsv", ".fit.lock"]
)
def test_fit_cli_rejects_folder_at_output_name(tmp_path, capsys, name):
    write_triplets(tmp_path / "train.npy")
    (tmp_path / "objects.txt").write_text("".join(f"object{index}\n" for index in range(12)))
    out = tmp_path / "run"
    (out / name).mkdir(parents=True)

    status = main(["fit", str(tmp_path / "train.npy"), "--objects", str(tmp_path / "objects.txt"),
                   "-o", str(out), "--n-dims", "3", "--max-epochs", "1"])

    assert status == 1
    error = capsys.readouterr().err
    assert f"{out / name} is a folder, but dimalign fit writes a file of that name" in error
    assert sorted(path.name for path in out.iterdir()) == [name]


def test_fit_cli_rejects_file_at_tensorboard_folder(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    out = tmp_path / "run"
    out.mkdir()
    (out / "tensorboard").write_text("the user's own notes\n")

    status = main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(out),
                   "--n-dims", "3", "--max-epochs", "1", "--tensorboard"])

    assert status == 1
    error = capsys.readouterr().err
    assert f"{out / 'tensorboard'} is a file, but --tensorboard writes its event files into a folder" in error
    assert sorted(path.name for path in out.iterdir()) == ["tensorboard"]


def test_fit_cli_resume_of_other_split(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    arguments = ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"),
                 "--n-dims", "3", "--max-epochs", "1"]
    assert main(arguments) == 0

    assert main(arguments + ["--resume", "--split-seed", "1"]) == 1

    error = capsys.readouterr().err
    assert "was trained on other triplets" in error
    assert "--val-fraction and --split-seed" in error


def test_fit_cli_objects_differ_from_folder_table(tmp_path, capsys):
    folder = tmp_path / "simulated"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    (folder / "objects.tsv").write_text("".join(f"object_{index}\n" for index in range(12)))
    (tmp_path / "names.txt").write_text("".join(f"name{index}\n" for index in range(12)))

    status = main(["fit", str(folder), "--objects", str(tmp_path / "names.txt"),
                   "-o", str(tmp_path / "run"), "--n-dims", "3", "--max-epochs", "1"])

    assert status == 0
    assert (f"--objects {tmp_path / 'names.txt'} names row 0 'name0', but {folder / 'objects.tsv'} names it "
            "'object_0'") in capsys.readouterr().err
    assert "\tname0\t" in (tmp_path / "run" / "objects.tsv").read_text()


def test_fit_cli_objects_replace_unreadable_folder_table(tmp_path):
    folder = tmp_path / "simulated"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    (folder / "objects.tsv").write_bytes(b"object\xff\n")
    (tmp_path / "names.txt").write_text("".join(f"name{index}\n" for index in range(12)))

    assert main(["fit", str(folder), "--objects", str(tmp_path / "names.txt"),
                 "-o", str(tmp_path / "run"), "--n-dims", "3", "--max-epochs", "1"]) == 0


def test_fit_cli_keeps_object_table_columns(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    write_triplets(folder / "triplets.npy")
    table = "index\tobject_id\tsource\tcategory\n" + "".join(
        f"{index}\tobj{index}\timages/{index}.jpg\tgroup{index % 3}\n" for index in range(12)
    )
    (folder / "objects.tsv").write_text(table)

    assert main(["fit", str(folder), "-o", str(folder), "--n-dims", "3", "--max-epochs", "1"]) == 0

    assert (folder / "objects.tsv").read_text() == table
    assert (folder / "embedding.npz").is_file()


def test_fit_cli_rejects_split_folder_as_validation(tmp_path, capsys):
    folder = tmp_path / "split"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    write_triplets(folder / "val.npy", n_triplets=30, seed=1)

    status = main(["fit", str(folder / "train.npy"), "--n-objects", "12", "--val", str(folder),
                   "-o", str(tmp_path / "run"), "--n-dims", "3", "--max-epochs", "1"])

    assert status == 1
    error = capsys.readouterr().err
    assert f"--val {folder} is a folder, which loads train.npy, the training triplets of a split" in error
    assert f"such as {folder / 'val.npy'}" in error
    assert not (tmp_path / "run").exists()


def test_fit_cli_warns_when_validation_is_training_file(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    np.savetxt(tmp_path / "copy.txt", np.load(tmp_path / "train.npy"), fmt="%d")

    status = main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "--val", str(tmp_path / "copy.txt"),
                   "-o", str(tmp_path / "run"), "--n-dims", "3", "--max-epochs", "1"])

    assert status == 0
    error = capsys.readouterr().err
    assert (f"the validation triplets of {tmp_path / 'copy.txt'} are the training triplets of "
            f"{tmp_path / 'train.npy'}") in error


def test_fit_cli_warns_about_unread_test_file(tmp_path, capsys):
    # A folder with train_90.npy and test_10.npy, a layout other than dimalign's.
    # fit reads only the training file and splits its validation triplets off it.
    folder = tmp_path / "vice_data"
    folder.mkdir()
    write_triplets(folder / "train_90.npy")
    write_triplets(folder / "test_10.npy", n_triplets=30, seed=1)

    status = main(["fit", str(folder), "--n-objects", "12", "-o", str(tmp_path / "run"),
                   "--n-dims", "3", "--max-epochs", "1"])

    assert status == 0
    error = capsys.readouterr().err
    assert f"{folder} also contains test_10.npy, which fit does not read" in error
    assert f"--val {folder / 'test_10.npy'}" in error


def test_fit_cli_val_file_no_unread_warning(tmp_path, capsys):
    folder = tmp_path / "imported"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    write_triplets(folder / "val.npy", n_triplets=30, seed=1)

    assert main(["fit", str(folder), "--n-objects", "12", "-o", str(tmp_path / "run"),
                 "--n-dims", "3", "--max-epochs", "1"]) == 0
    assert "which fit does not read" not in capsys.readouterr().err


def test_fit_cli_read_only_output_fails_before_training(tmp_path, capsys, monkeypatch, unwritable_folder):
    import dimalign.embedding

    write_triplets(tmp_path / "train.npy")
    locked = unwritable_folder

    def no_work(*args, **kwargs):
        raise AssertionError("the fit started before the run directory was checked")

    monkeypatch.setattr(dimalign.embedding, "fit_run", no_work)

    status = main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(locked),
                   "--n-dims", "3", "--max-epochs", "1"])

    assert status == 1
    assert f"cannot write into {locked}" in capsys.readouterr().err
    assert list(locked.iterdir()) == []


def test_fit_cli_records_folder_object_table_as_input(tmp_path):
    folder = tmp_path / "simulated"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    (folder / "objects.tsv").write_text("".join(f"obj{index}\n" for index in range(12)))

    assert main(["fit", str(folder), "-o", str(tmp_path / "run"), "--n-dims", "3", "--max-epochs", "1"]) == 0

    inputs = json.loads((tmp_path / "run" / "manifest.json").read_text())["inputs"]
    assert inputs["objects"]["path"] == str(folder / "objects.tsv")
    assert "sha256" in inputs["objects"]


@pytest.mark.parametrize(("options", "level"), [
    (["--max-epochs", "3", "--stability-epochs", "3"], "WARNING"),
    # A shortened run with the default rule is common and meant, so it is only noted.
    (["--max-epochs", "3"], "INFO"),
    (["--max-epochs", "3", "--stability-epochs", "2"], None),
])
def test_fit_cli_notes_when_stability_rule_cannot_stop(tmp_path, capsys, options, level):
    write_triplets(tmp_path / "train.npy")

    status = main(["-v", "fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"),
                   "--n-dims", "3", *options])

    assert status == 0
    message = "so the fit cannot stop before epoch 3: lower --stability-epochs below --max-epochs"
    lines = [line for line in capsys.readouterr().err.splitlines() if message in line]
    assert [level in line for line in lines] == ([True] if level else [])


def test_fit_cli_n_dims_beyond_memory(tmp_path, monkeypatch, capsys, no_parameter_allocation):
    from dimalign.embedding import base

    monkeypatch.setattr(base, "available_memory", lambda device: 8 * 2**30)
    write_triplets(tmp_path / "train.npy")

    status = main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"),
                   "--n-dims", "100000000", "--max-epochs", "2"])

    assert status == 1
    error = capsys.readouterr().err
    assert "n_dims=100000000 needs at least 38.4 GB" in error
    assert "8.6 GB of memory is available" in error
    assert "--n-dims" in error
    assert not (tmp_path / "run").exists()


def test_fit_cli_reads_table_next_to_file(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    (folder / "objects.tsv").write_text("".join(f"obj{index}\n" for index in range(12)))

    status = main(["fit", str(folder / "train.npy"), "-o", str(tmp_path / "run"), "--n-dims", "3",
                   "--max-epochs", "1"])

    assert status == 0
    assert f"using the object table {folder / 'objects.tsv'}, which lies next to the triplets" in (
        capsys.readouterr().err
    )
    assert "\tobj0\t" in (tmp_path / "run" / "objects.tsv").read_text()
    inputs = json.loads((tmp_path / "run" / "manifest.json").read_text())["inputs"]
    assert inputs["objects"]["path"] == str(folder / "objects.tsv")


def test_fit_cli_file_table_count_mismatch(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    (folder / "objects.tsv").write_text("".join(f"obj{index}\n" for index in range(12)))

    status = main(["fit", str(folder / "train.npy"), "--n-objects", "20", "-o", str(tmp_path / "run"),
                   "--max-epochs", "1"])

    assert status == 1
    assert f"--n-objects 20 disagrees with {folder / 'objects.tsv'}, which lists 12 objects" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


def test_fit_cli_keeps_other_table_without_checkpoint(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    (tmp_path / "objects.txt").write_text("".join(f"object{index}\n" for index in range(12)))
    out = tmp_path / "run"
    out.mkdir()
    users_table = "".join(f"item{index}\n" for index in range(12))
    (out / "objects.tsv").write_text(users_table)

    status = main(["fit", str(tmp_path / "train.npy"), "--objects", str(tmp_path / "objects.txt"),
                   "-o", str(out), "--n-dims", "3", "--max-epochs", "1"])

    assert status == 1
    assert (f"{out / 'objects.tsv'} names row 0 'item0', this fit's object table 'object0', and no "
            "checkpoint.pt of a fit lies next to it") in capsys.readouterr().err
    assert (out / "objects.tsv").read_text() == users_table
    assert sorted(path.name for path in out.iterdir()) == ["objects.tsv"]


def test_fit_cli_failed_fit_removes_its_table(tmp_path, monkeypatch, capsys):
    from dimalign.embedding import VICE

    write_triplets(tmp_path / "train.npy")
    (tmp_path / "objects.txt").write_text("".join(f"object{index}\n" for index in range(12)))
    (tmp_path / "other.txt").write_text("".join(f"item{index}\n" for index in range(12)))
    out = tmp_path / "run"
    out.mkdir()
    arguments = ["fit", str(tmp_path / "train.npy"), "-o", str(out), "--n-dims", "3", "--max-epochs", "1"]

    def out_of_memory(self, n_objects, generator):
        raise MemoryError("no memory for the parameters")

    with monkeypatch.context() as patch:
        patch.setattr(VICE, "_init_parameters", out_of_memory)
        assert main(arguments + ["--objects", str(tmp_path / "other.txt")]) == 1
    assert "no memory for the parameters" in capsys.readouterr().err
    # The failed fit wrote no checkpoint, so the table it wrote goes too.
    assert list(out.iterdir()) == []

    assert main(arguments + ["--objects", str(tmp_path / "objects.txt")]) == 0
    assert "\tobject0\t" in (out / "objects.tsv").read_text()


def test_fit_cli_object_count_beyond_memory(tmp_path, monkeypatch, capsys, no_parameter_allocation):
    from dimalign.embedding import base

    monkeypatch.setattr(base, "available_memory", lambda device: 8 * 2**30)
    write_triplets(tmp_path / "train.npy")

    status = main(["fit", str(tmp_path / "train.npy"), "--n-objects", "100000000000", "-o",
                   str(tmp_path / "run"), "--n-dims", "3", "--max-epochs", "2"])

    assert status == 1
    error = capsys.readouterr().err
    assert ("even 1 dimension needs at least 3.2 TB, so check the number of objects, "
            "100000000000 (CLI: --n-objects or --objects)") in error
    assert "smaller n_dims" not in error
    assert not (tmp_path / "run").exists()


def test_fit_cli_without_table_keeps_users_table(tmp_path, capsys):
    write_triplets(tmp_path / "train.npy")
    out = tmp_path / "run"
    out.mkdir()
    (out / "objects.tsv").write_text("a\nb\n")

    status = main(["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "-o", str(out),
                   "--n-dims", "3", "--max-epochs", "1"])

    assert status == 1
    assert (f"{out / 'objects.tsv'} exists, but this fit has no object table, so readers of the run "
            "would take that file for the names of its 12 rows") in capsys.readouterr().err
    assert (out / "objects.tsv").read_text() == "a\nb\n"
    assert sorted(path.name for path in out.iterdir()) == ["objects.tsv"]


def test_fit_cli_unreadable_neighbour_table_explained(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    (folder / "objects.tsv").write_text("a\n\nb\n")

    status = main(["fit", str(folder / "train.npy"), "--n-objects", "12", "-o", str(tmp_path / "run"),
                   "--max-epochs", "1"])

    assert status == 1
    error = capsys.readouterr().err
    assert f"{folder / 'objects.tsv'}, line 2: blank line in the object list" in error
    assert (f"dimalign fit reads {folder / 'objects.tsv'} because it lies next to the triplets: "
            "fix it, or pass the right table with --objects") in error


def test_fit_cli_objects_count_differs_from_folder(tmp_path, capsys):
    folder = tmp_path / "simulated"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    (folder / "objects.tsv").write_text("".join(f"object_{index}\n" for index in range(12)))
    (tmp_path / "names.txt").write_text("".join(f"name{index}\n" for index in range(13)))

    status = main(["fit", str(folder), "--objects", str(tmp_path / "names.txt"),
                   "-o", str(tmp_path / "run"), "--n-dims", "3", "--max-epochs", "1"])

    assert status == 1
    assert (f"--objects {tmp_path / 'names.txt'} lists 13 objects, but {folder / 'objects.tsv'} "
            "lists 12, so the triplets index another object set") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_fit_cli_short_neighbour_table_named(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    write_triplets(folder / "train.npy")
    (folder / "objects.tsv").write_text("".join(f"obj{index}\n" for index in range(5)))

    status = main(["fit", str(folder / "train.npy"), "-o", str(tmp_path / "run"), "--n-dims", "3",
                   "--max-epochs", "1"])

    assert status == 1
    error = capsys.readouterr().err
    assert "is out of range for 5 objects" in error
    assert error.rstrip().endswith(
        f"The 5 objects come from {folder / 'objects.tsv'}, which dimalign fit reads because it lies "
        "next to the triplets: pass the table that the triplets index with --objects, or move this "
        "one away"
    )
    assert not (tmp_path / "run").exists()


# Runs `dimalign fit` with a pause at one point of the fit. At the pause the
# process prints "paused" and sleeps, so that the test sends its signal there.
PAUSED_FIT_SCRIPT = """
import contextlib, sys, time
import dimalign.embedding.base as base
import dimalign.embedding.checkpoint as checkpoint
from dimalign.cli import main

pause, pause_epoch = sys.argv[1], int(sys.argv[2])

def announce_and_wait():
    print("paused", flush=True)
    time.sleep(300)

if pause == "epoch":
    log_epoch = base.TripletEmbedding._log_epoch
    def log_epoch_and_wait(self, row, writer):
        log_epoch(self, row, writer)
        if row["epoch"] == pause_epoch:
            announce_and_wait()
    base.TripletEmbedding._log_epoch = log_epoch_and_wait
elif pause == "checkpoint":
    atomic_path = checkpoint.atomic_path
    @contextlib.contextmanager
    def atomic_path_with_wait(path, **options):
        with atomic_path(path, **options) as temporary:
            yield temporary
            announce_and_wait()
    checkpoint.atomic_path = atomic_path_with_wait
elif pause == "save":
    write_text_atomic = base.write_text_atomic
    def write_and_wait(path, text):
        write_text_atomic(path, text)
        if path.name == "config.toml":
            announce_and_wait()
    base.write_text_atomic = write_and_wait
sys.exit(main(sys.argv[3:]))
"""


def fit_until_signal(arguments, pause, pause_epoch, stop):
    """Run `dimalign fit` in a new process, send ``stop`` at the pause and return the exit status."""
    import signal
    import subprocess
    import sys

    # A test run started in the background ignores SIGINT, and the child would inherit that.
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_FIT_SCRIPT, pause, str(pause_epoch), *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout.readline().strip() == "paused", process.stderr.read()
        process.send_signal(getattr(signal, stop))
        process.wait(timeout=120)
    finally:
        process.kill()
        process.stdout.close()
        process.stderr.close()
    return process.returncode


def embedding_arrays(run) -> dict:
    with np.load(run / "embedding.npz") as archive:
        return {name: archive[name] for name in archive.files}


STOP_STATUS = {"SIGINT": 130, "SIGTERM": 143}


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    ("pause", "pause_epoch", "kept"),
    [
        # Before the first checkpoint, nothing can be resumed, so the folder goes.
        ("epoch", 1, None),
        ("checkpoint", 0, None),
        # After a checkpoint, the folder stays with only what a resume needs.
        ("epoch", 3, ["checkpoint.pt"]),
        ("save", 0, ["checkpoint.pt"]),
    ],
)
def test_fit_cli_signal_leaves_resumable_run(tmp_path, stop, pause, pause_epoch, kept):
    write_triplets(tmp_path / "train.npy")
    arguments = ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "--n-dims", "3",
                 "--max-epochs", "4", "--checkpoint-every", "2", "--min-objects", "0"]
    assert main(arguments + ["-o", str(tmp_path / "straight")]) == 0
    run = tmp_path / "run"

    assert fit_until_signal(arguments + ["-o", str(run)], pause, pause_epoch, stop) == STOP_STATUS[stop]

    if kept is None:
        assert not run.exists()
        return
    assert sorted(path.name for path in run.iterdir()) == kept
    with pytest.raises(FileNotFoundError):
        from dimalign.embedding import VICE

        VICE.load(run)
    assert main(arguments + ["-o", str(run), "--resume"]) == 0
    resumed, straight = embedding_arrays(run), embedding_arrays(tmp_path / "straight")
    assert resumed.keys() == straight.keys()
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_fit_cli_signal_in_save_keeps_earlier_run(tmp_path, stop):
    """A resume stopped while it writes its results leaves the earlier finished run whole."""
    write_triplets(tmp_path / "train.npy")
    run = tmp_path / "run"
    arguments = ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "--n-dims", "3", "-o", str(run),
                 "--min-objects", "0", "--resume", "--max-epochs"]
    assert main(arguments + ["2"]) == 0
    earlier = {name: (run / name).read_bytes() for name in ("embedding.npz", "config.toml", "history.csv",
                                                            "manifest.json")}

    assert fit_until_signal(arguments + ["4"], "save", 0, stop) == STOP_STATUS[stop]

    assert sorted(path.name for path in run.iterdir()) == sorted([*earlier, "checkpoint.pt"])
    for name, content in earlier.items():
        assert (run / name).read_bytes() == content, name
    assert main(arguments + ["4"]) == 0
    assert json.loads((run / "manifest.json").read_text())["outputs"]["n_epochs"] == 4


def test_fit_cli_second_process_same_output(tmp_path, capsys):
    """A fit into the run directory of a fit that runs in another process fails and changes nothing."""
    import signal
    import subprocess
    import sys

    write_triplets(tmp_path / "train.npy")
    run = tmp_path / "run"
    arguments = ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "--n-dims", "3", "-o", str(run),
                 "--max-epochs", "4", "--checkpoint-every", "1", "--min-objects", "0", "--resume"]
    running = subprocess.Popen(
        [sys.executable, "-c", PAUSED_FIT_SCRIPT, "epoch", "2", *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert running.stdout.readline().strip() == "paused", running.stderr.read()
        checkpoint = (run / "checkpoint.pt").read_bytes()

        assert main(arguments) == 1

        assert "is in use by another fit" in capsys.readouterr().err
        assert (run / "checkpoint.pt").read_bytes() == checkpoint
        assert running.poll() is None
        running.send_signal(signal.SIGTERM)
        assert running.wait(timeout=120) == 143
    finally:
        running.kill()
        running.stdout.close()
        running.stderr.close()
    assert main(arguments) == 0
    assert json.loads((run / "manifest.json").read_text())["outputs"]["n_epochs"] == 4


def test_fit_cli_reports_stage_of_killed_fit(tmp_path, capsys):
    """SIGKILL during the final moves can leave the earlier results in the hidden folder, which is kept."""
    write_triplets(tmp_path / "train.npy")
    run = tmp_path / "run"
    arguments = ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "--n-dims", "3", "-o", str(run),
                 "--resume", "--max-epochs"]
    assert main(arguments + ["1"]) == 0
    stage = run / ".partial-k2j3x9"
    (stage / ".earlier").mkdir(parents=True)
    (stage / ".earlier" / "embedding.npz").write_bytes(b"earlier result")
    capsys.readouterr()

    assert main(arguments + ["2"]) == 0

    assert f"{stage} (14 bytes) is the hidden folder of an interrupted dimalign run" in capsys.readouterr().err
    assert (stage / ".earlier" / "embedding.npz").read_bytes() == b"earlier result"


def test_fit_cli_spose_resume_after_signal(tmp_path):
    write_triplets(tmp_path / "train.npy")
    arguments = ["fit", str(tmp_path / "train.npy"), "--n-objects", "12", "--n-dims", "3", "--method", "spose",
                 "--max-epochs", "4", "--checkpoint-every", "2", "--min-objects", "0"]
    assert main(arguments + ["-o", str(tmp_path / "straight")]) == 0
    run = tmp_path / "run"

    assert fit_until_signal(arguments + ["-o", str(run)], "epoch", 3, "SIGINT") == 130
    assert sorted(path.name for path in run.iterdir()) == ["checkpoint.pt"]
    assert main(arguments + ["-o", str(run), "--resume"]) == 0

    resumed, straight = embedding_arrays(run), embedding_arrays(tmp_path / "straight")
    assert resumed.keys() == straight.keys()
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)
    history = (run / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3", "4"]
