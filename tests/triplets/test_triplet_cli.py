"""The import-triplets and simulate subcommands, run in-process."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import numpy as np
import pytest

from dimalign.cli import main
from dimalign.io.files import sha256_file
from dimalign.io.objects import ObjectTable, read_object_table, write_object_table
from dimalign.io.triplets import load_triplets


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def set_keys(triplets: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(sorted(row)) for row in triplets.tolist()}


# --------------------------------------------------------------------------- import-triplets


def test_import_one_based_file(tmp_path):
    source = tmp_path / "raw.txt"
    source.write_text("1 2 3\n3 4 5\n2 4 5\n1 3 5\n", encoding="utf-8")
    out = tmp_path / "out" / "triplets.npy"

    status = main(
        ["import-triplets", str(source), "-o", str(out), "--n-objects", "5", "--one-based"]
    )

    assert status == 0
    assert np.load(out).tolist() == [[0, 1, 2], [2, 3, 4], [1, 3, 4], [0, 2, 4]]
    manifest = read_manifest(out.parent)
    assert manifest["step"] == "import-triplets"
    assert manifest["settings"]["one_based"] is True
    assert manifest["settings"]["n_objects"] == 5
    assert manifest["inputs"]["triplets"]["sha256"] == sha256_file(source)
    assert manifest["outputs"]["n_triplets"] == 4


def test_import_error_suggests_one_based(tmp_path, capsys):
    source = tmp_path / "raw.txt"
    source.write_text("1 2 3\n3 4 5\n2 4 5\n1 3 5\n", encoding="utf-8")
    out = tmp_path / "out.npy"

    status = main(["import-triplets", str(source), "-o", str(out), "--n-objects", "5"])

    assert status == 1
    error = capsys.readouterr().err
    assert "dimalign import-triplets: error:" in error
    assert "--one-based" in error
    assert not out.exists()


def test_import_without_object_count_fails(tmp_path, capsys):
    source = tmp_path / "raw.txt"
    source.write_text("0 1 2\n", encoding="utf-8")

    status = main(["import-triplets", str(source), "-o", str(tmp_path / "out.npy")])

    assert status == 1
    assert "--n-objects N" in capsys.readouterr().err


def test_import_log_hides_staging_folder(tmp_path, capsys):
    """The hidden .partial-* folder is gone when the command ends, so no log line names a file written there."""
    source = tmp_path / "raw.txt"
    source.write_text("".join(f"{i} {i + 1} {i + 2}\n" for i in range(10)), encoding="utf-8")
    status = main(["import-triplets", str(source), "--n-objects", "12", "--split", "0.2",
                   "-o", str(tmp_path / "out")])

    assert status == 0
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if "wrote" in line and ".partial-" in line] == []


def test_import_choice_column_with_split(tmp_path):
    rows = ["subject,a,b,c,choice"]
    rng = np.random.default_rng(0)
    for trial in range(200):
        objects = rng.choice(np.arange(1, 13), size=3, replace=False)
        rows.append(f"s{trial % 4},{objects[0]},{objects[1]},{objects[2]},{trial % 3 + 1}")
    source = tmp_path / "trials.csv"
    source.write_text("\n".join(rows) + "\n", encoding="utf-8")
    table = tmp_path / "names.txt"
    table.write_text("".join(f"object{index}\n" for index in range(12)), encoding="utf-8")
    out_dir = tmp_path / "imported"

    status = main([
        "import-triplets", str(source), "-o", str(out_dir), "--objects", str(table),
        "--one-based", "--columns", "a,b,c", "--choice-column", "choice",
        "--split", "0.25", "--seed", "3",
    ])

    assert status == 0
    train, val = np.load(out_dir / "train.npy"), np.load(out_dir / "val.npy")
    assert len(train) + len(val) == 200
    assert not set_keys(train) & set_keys(val)
    assert read_object_table(out_dir / "objects.tsv").object_ids[:2] == ("object0", "object1")
    manifest = read_manifest(out_dir)
    assert manifest["outputs"]["n_val"] == len(val)
    assert manifest["settings"]["choice_column"] == "choice"
    # The first trial: its odd one out (choice 1) is its first object column.
    first = rows[1].split(",")
    expected = [int(first[2]) - 1, int(first[3]) - 1, int(first[1]) - 1]
    assert expected in np.concatenate([train, val]).tolist()


def test_import_refuses_other_steps_folder(tmp_path, capsys):
    source = tmp_path / "raw.txt"
    source.write_text("0 1 2\n", encoding="utf-8")
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "manifest.json").write_text(json.dumps({"step": "fit"}), encoding="utf-8")

    status = main(["import-triplets", str(source), "-o", str(out_dir), "--n-objects", "3"])

    assert status == 1
    assert "output of dimalign fit" in capsys.readouterr().err


# --------------------------------------------------------------------------- simulate


def test_simulate_from_feature_file(tmp_path):
    features = np.random.default_rng(1).random((20, 4)).astype(np.float32)
    np.save(tmp_path / "features.npy", features)
    out_dir = tmp_path / "simulated"

    status = main([
        "simulate", str(tmp_path / "features.npy"), "-o", str(out_dir), "--n-triplets", "300",
        "--seed", "2",
    ])

    assert status == 0
    triplets = np.load(out_dir / "triplets.npy")
    assert triplets.shape == (300, 3)
    assert len(set_keys(triplets)) == 300
    kept = np.einsum("ij,ij->i", features[triplets[:, 0]], features[triplets[:, 1]])
    for first, second in ((0, 2), (1, 2)):
        other = np.einsum("ij,ij->i", features[triplets[:, first]], features[triplets[:, second]])
        assert np.all(kept >= other)
    objects = read_object_table(out_dir / "objects.tsv")
    assert objects.object_ids[0] == "object_0"
    assert len(objects) == 20
    manifest = read_manifest(out_dir)
    assert manifest["step"] == "simulate"
    assert manifest["outputs"]["n_ties"] == 0
    assert manifest["settings"]["similarity"] == "dot"
    assert manifest["settings"]["relu"] is True
    assert manifest["inputs"]["features"]["sha256"] == sha256_file(tmp_path / "features.npy")


def test_simulate_same_seed_same_files(tmp_path):
    np.save(tmp_path / "features.npy", np.random.default_rng(1).random((15, 3)))
    arguments = ["simulate", str(tmp_path / "features.npy"), "--n-triplets", "100",
                 "--rule", "softmax", "--temperature", "0.1", "--seed", "9"]

    assert main(arguments + ["-o", str(tmp_path / "a")]) == 0
    assert main(arguments + ["-o", str(tmp_path / "b")]) == 0

    first = np.load(tmp_path / "a" / "triplets.npy")
    assert np.array_equal(first, np.load(tmp_path / "b" / "triplets.npy"))


def test_simulate_feature_folder_with_split(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    features = np.random.default_rng(3).normal(size=(12, 5)).astype(np.float32)
    np.save(folder / "features.npy", features)
    names = [f"img{index:02d}.png" for index in range(12)]
    write_object_table(ObjectTable.from_ids(names), folder / "objects.tsv")
    out_dir = tmp_path / "simulated"

    status = main([
        "simulate", str(folder), "-o", str(out_dir), "--n-triplets", "200",
        "--similarity", "euclidean", "--val-fraction", "0.1",
    ])

    assert status == 0
    train, val = np.load(out_dir / "train.npy"), np.load(out_dir / "val.npy")
    assert (len(train), len(val)) == (180, 20)
    assert not set_keys(train) & set_keys(val)
    assert read_object_table(out_dir / "objects.tsv").object_ids == tuple(names)
    # Loading the folder takes train.npy, and objects.tsv sets the number of objects.
    assert load_triplets(out_dir).tolist() == train.tolist()
    manifest = read_manifest(out_dir)
    assert manifest["settings"]["relu"] is False
    assert "objects" in manifest["inputs"]


def test_simulate_nan_row_fails_cleanly(tmp_path, capsys):
    features = np.ones((6, 2))
    features[2] = np.nan
    np.save(tmp_path / "features.npy", features)
    out_dir = tmp_path / "simulated"

    status = main(
        ["simulate", str(tmp_path / "features.npy"), "-o", str(out_dir), "--n-triplets", "5"]
    )

    assert status == 1
    assert "feature rows 2 " in capsys.readouterr().err
    assert not (out_dir / "triplets.npy").exists()


def test_simulate_too_many_unique_fails(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.ones((5, 2)))

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(tmp_path / "out"),
                   "--n-triplets", "20"])

    assert status == 1
    assert "only 10 distinct triplets" in capsys.readouterr().err


def test_import_real_human_triplets(tmp_path, things_dir):
    out_dir = tmp_path / "human"

    status = main([
        "import-triplets", str(things_dir / "human_triplets.txt"), "-o", str(out_dir),
        "--objects", str(things_dir / "unique_id.txt"),
    ])

    assert status == 0
    triplets = np.load(out_dir / "triplets.npy")
    assert triplets.shape == (131_552, 3)
    assert np.array_equal(triplets, np.loadtxt(things_dir / "human_triplets.txt", dtype=np.int64))
    assert read_object_table(out_dir / "objects.tsv").object_ids[0] == "aardvark"
    assert read_manifest(out_dir)["outputs"]["unseen_objects"] == []


# --------------------------------------------------------------------------- option checks


def test_reimport_rejects_stale_split_files(tmp_path, capsys):
    source = tmp_path / "raw.txt"
    source.write_text("".join(f"{i} {i + 1} {i + 2}\n" for i in range(20)), encoding="utf-8")
    out_dir = tmp_path / "combo"
    base = ["import-triplets", str(source), "-o", str(out_dir), "--n-objects", "22"]
    assert main(base + ["--split", "0.2"]) == 0
    capsys.readouterr()

    status = main(base)

    assert status == 1
    error = capsys.readouterr().err
    assert "train.npy, val.npy" in error
    assert "choose another output folder" in error
    assert not (out_dir / "triplets.npy").exists()
    assert read_manifest(out_dir)["outputs"]["files"]["train"] == "train.npy"


def test_import_same_layout_again_succeeds(tmp_path):
    source = tmp_path / "raw.txt"
    source.write_text("0 1 2\n1 2 3\n", encoding="utf-8")
    arguments = ["import-triplets", str(source), "-o", str(tmp_path / "out"), "--n-objects", "4"]

    assert main(arguments) == 0
    assert main(arguments) == 0


def test_simulate_rejects_stale_files(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((10, 3)))
    base = ["simulate", str(tmp_path / "features.npy"), "-o", str(tmp_path / "out"),
            "--n-triplets", "50"]
    assert main(base) == 0
    capsys.readouterr()

    status = main(base + ["--val-fraction", "0.2"])

    assert status == 1
    assert "triplets.npy from an earlier dimalign simulate" in capsys.readouterr().err
    assert not (tmp_path / "out" / "train.npy").exists()


def test_split_out_of_range_names_option(tmp_path, capsys):
    source = tmp_path / "raw.txt"
    source.write_text("0 1 2\n", encoding="utf-8")

    with pytest.raises(SystemExit):
        main(["import-triplets", str(source), "-o", str(tmp_path / "out"), "--n-objects", "3",
              "--split", "1.5"])

    assert "argument --split/--val-fraction: 1.5 is invalid" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--temperature", "0.5"], "--temperature 0.5 has no effect with --rule argmax"),
        (["--rule", "softmax", "--temperature", "0"], "--temperature 0.0 is invalid"),
        (["--layer", "foo"], "layer 'foo' cannot be chosen"),
    ],
)
def test_simulate_contradictory_options_fail(tmp_path, capsys, options, message):
    np.save(tmp_path / "features.npy", np.ones((6, 2)))
    out_dir = tmp_path / "out"

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(out_dir),
                   "--n-triplets", "5"] + options)

    assert status == 1
    assert message in capsys.readouterr().err
    assert not out_dir.exists()


def test_simulate_negative_batch_size_fails(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.ones((6, 2)))

    with pytest.raises(SystemExit):
        main(["simulate", str(tmp_path / "features.npy"), "-o", str(tmp_path / "out"),
              "--n-triplets", "5", "--batch-size", "-5"])

    assert "argument --batch-size: -5 is invalid" in capsys.readouterr().err


def test_simulate_objects_names_rows(tmp_path):
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((6, 2)))
    names = tmp_path / "unique_id.txt"
    names.write_text("".join(f"thing{index}\n" for index in range(6)), encoding="utf-8")
    out_dir = tmp_path / "out"

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(out_dir),
                   "--n-triplets", "5", "--objects", str(names)])

    assert status == 0
    table = read_object_table(out_dir / "objects.tsv")
    assert table.object_ids == tuple(f"thing{index}" for index in range(6))
    assert read_manifest(out_dir)["inputs"]["objects"]["sha256"] == sha256_file(names)


def test_simulate_objects_count_mismatch_fails(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.ones((6, 2)))
    names = tmp_path / "unique_id.txt"
    names.write_text("a\nb\nc\n", encoding="utf-8")

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(tmp_path / "out"),
                   "--n-triplets", "5", "--objects", str(names)])

    assert status == 1
    error = capsys.readouterr().err
    assert "lists 3 objects" in error
    assert "have 6 rows" in error


def test_import_rejects_output_that_is_the_input(tmp_path, capsys):
    path = tmp_path / "judgements.txt"
    path.write_text("1 2 3\n2 3 4\n")
    status = main(["import-triplets", str(path), "-o", str(path), "--n-objects", "5", "--one-based"])
    assert status == 1
    assert "is the triplet file" in capsys.readouterr().err
    assert path.read_text() == "1 2 3\n2 3 4\n"


@pytest.mark.parametrize(("name", "options"), [("triplets.npy", []), ("train.npy", ["--val-fraction", "0.2"])])
def test_simulate_rejects_output_that_is_the_features(tmp_path, capsys, name, options):
    """A features file named like an output used to be replaced by the triplets."""
    folder = tmp_path / "s"
    folder.mkdir()
    features = np.random.default_rng(0).random((30, 5))
    np.save(folder / name, features)
    status = main(["simulate", str(folder / name), "-o", str(folder), "--n-triplets", "50", *options])
    assert status == 1
    assert f"the output {folder / name} is the features file" in capsys.readouterr().err
    assert np.array_equal(np.load(folder / name), features)


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--seed", "5"], "--seed sets the seed of --split"),
     (["--delimiter", ";"], "--delimiter applies to text files")],
)
def test_import_rejects_options_without_effect(tmp_path, capsys, options, message):
    np.save(tmp_path / "t.npy", np.array([[0, 1, 2]]))
    status = main(["import-triplets", str(tmp_path / "t.npy"), "-o", str(tmp_path / "out"), "--n-objects", "5", *options])
    assert status == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_import_odd_column_two_conflicts_with_choice_column(tmp_path, capsys):
    """argparse saw an explicit --odd-column 2, the old default, as absent."""
    np.save(tmp_path / "t.npy", np.array([[0, 1, 2]]))
    with pytest.raises(SystemExit):
        main(["import-triplets", str(tmp_path / "t.npy"), "-o", str(tmp_path / "out"), "--n-objects", "5",
              "--odd-column", "2", "--choice-column", "3"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_import_manifest_lists_few_unseen_objects(tmp_path):
    np.save(tmp_path / "t.npy", np.array([[0, 1, 2]]))
    assert main(["import-triplets", str(tmp_path / "t.npy"), "-o", str(tmp_path / "out"), "--n-objects", "1000"]) == 0
    outputs = json.loads((tmp_path / "out" / "manifest.json").read_text())["outputs"]
    assert outputs["n_unseen_objects"] == 997
    assert outputs["unseen_objects"] == list(range(3, 103))


def test_import_val_fraction_is_split(tmp_path):
    """simulate and fit call the held-out share --val-fraction; import-triplets accepts that name too."""
    source = tmp_path / "raw.txt"
    rng = np.random.default_rng(1)
    source.write_text("".join(f"{a} {b} {c}\n" for a, b, c in (rng.choice(12, 3, replace=False) for _ in range(100))))
    by_split, by_val_fraction = tmp_path / "split", tmp_path / "val_fraction"

    assert main(["import-triplets", str(source), "--n-objects", "12", "-o", str(by_split), "--split", "0.2"]) == 0
    assert main([
        "import-triplets", str(source), "--n-objects", "12", "-o", str(by_val_fraction), "--val-fraction", "0.2",
    ]) == 0

    assert np.array_equal(np.load(by_split / "val.npy"), np.load(by_val_fraction / "val.npy"))
    assert read_manifest(by_val_fraction)["settings"]["split"] == 0.2


@pytest.mark.parametrize("fraction", ["0", "0.004"])
def test_import_split_holding_out_nothing_fails(tmp_path, capsys, fraction):
    """round(fraction x 100) = 0 would write an empty val.npy, which fit then rejects."""
    source = tmp_path / "raw.txt"
    rng = np.random.default_rng(1)
    source.write_text("".join(f"{a} {b} {c}\n" for a, b, c in (rng.choice(12, 3, replace=False) for _ in range(100))))
    out = tmp_path / "out"

    status = main(["import-triplets", str(source), "--n-objects", "12", "-o", str(out), "--val-fraction", fraction])

    assert status == 1
    assert (
        f"--split/--val-fraction {float(fraction)} holds out no triplet, since round({float(fraction)} x 100 "
        "triplets) = 0: use at least 0.01, or leave out --split to write triplets.npy"
    ) in capsys.readouterr().err
    assert not out.exists()


def test_import_split_into_file_names_both_spellings(tmp_path, capsys):
    """The option may have been typed as --val-fraction, so the error names both spellings."""
    np.save(tmp_path / "t.npy", np.array([[0, 1, 2], [1, 2, 3]]))

    status = main([
        "import-triplets", str(tmp_path / "t.npy"), "--n-objects", "4", "-o", str(tmp_path / "out.npy"),
        "--val-fraction", "0.5",
    ])

    assert status == 1
    assert (
        f"--split/--val-fraction writes train.npy and val.npy: give an output folder, not {tmp_path / 'out.npy'}"
    ) in capsys.readouterr().err
    assert not (tmp_path / "out.npy").exists()


# --------------------------------------------------------------------------- failed runs


def _interrupt_after(monkeypatch, name: str) -> None:
    """Make save_triplets raise Terminated (as SIGTERM does) right after it wrote ``name``."""
    import dimalign.io.triplets as triplet_io
    from dimalign.cli import Terminated

    save = triplet_io.save_triplets

    def save_then_stop(triplets, path):
        written = save(triplets, path)
        if Path(path).name == name:
            raise Terminated(143)
        return written

    monkeypatch.setattr(triplet_io, "save_triplets", save_then_stop)


def test_simulate_interrupted_removes_new_folder(tmp_path, monkeypatch):
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((10, 3)))
    _interrupt_after(monkeypatch, "train.npy")
    out_dir = tmp_path / "new" / "out"

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(out_dir),
                   "--n-triplets", "50", "--val-fraction", "0.2"])

    assert status == 143
    assert not (tmp_path / "new").exists()


def test_simulate_interrupted_keeps_existing_files(tmp_path, monkeypatch):
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((10, 3)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine\n", encoding="utf-8")
    _interrupt_after(monkeypatch, "train.npy")

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(out_dir),
                   "--n-triplets", "50", "--val-fraction", "0.2"])

    assert status == 143
    assert sorted(path.name for path in out_dir.iterdir()) == ["notes.txt"]


def test_import_failed_write_removes_added_files(tmp_path, capsys):
    source = tmp_path / "raw.txt"
    source.write_text("0 1 2\n3 4 0\n", encoding="utf-8")
    out_dir = tmp_path / "out"
    (out_dir / "val.npy").mkdir(parents=True)

    status = main(["import-triplets", str(source), "-o", str(out_dir), "--n-objects", "5",
                   "--split", "0.5"])

    assert status == 1
    assert "val.npy" in capsys.readouterr().err
    assert sorted(path.name for path in out_dir.iterdir()) == ["val.npy"]


def test_import_interrupted_removes_new_folder(tmp_path, monkeypatch):
    source = tmp_path / "raw.txt"
    source.write_text("0 1 2\n3 4 0\n", encoding="utf-8")
    _interrupt_after(monkeypatch, "triplets.npy")
    out_dir = tmp_path / "out"

    status = main(["import-triplets", str(source), "-o", str(out_dir), "--n-objects", "5"])

    assert status == 143
    assert not out_dir.exists()


# --------------------------------------------------------------------------- files of the user


def _write_named_table(path: Path, names: list[str]) -> None:
    write_object_table(ObjectTable.from_ids(names), path)


def test_import_into_input_folder_keeps_its_objects(tmp_path, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "triplets.txt").write_text("0 1 2\n3 4 0\n", encoding="utf-8")
    _write_named_table(folder / "objects.tsv", list("abcde"))
    before = (folder / "objects.tsv").read_bytes()

    status = main(["import-triplets", str(folder / "triplets.txt"), "-o", str(folder),
                   "--n-objects", "5", "--split", "0.5"])

    assert status == 1
    error = capsys.readouterr().err
    assert f"{folder / 'objects.tsv'} exists and was not written by an earlier dimalign import-triplets run" in error
    assert "choose another output folder" in error
    assert (folder / "objects.tsv").read_bytes() == before
    assert sorted(path.name for path in folder.iterdir()) == ["objects.tsv", "triplets.txt"]


@pytest.mark.parametrize("command", ["import-triplets", "simulate"])
def test_user_triplets_file_is_not_replaced(tmp_path, capsys, command):
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    user_triplets = np.array([[5, 6, 7]])
    np.save(out_dir / "triplets.npy", user_triplets)
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((10, 3)))
    (tmp_path / "raw.txt").write_text("0 1 2\n", encoding="utf-8")
    if command == "simulate":
        arguments = ["simulate", str(tmp_path / "features.npy"), "--n-triplets", "20"]
    else:
        arguments = ["import-triplets", str(tmp_path / "raw.txt"), "--n-objects", "10"]

    status = main([*arguments, "-o", str(out_dir)])

    assert status == 1
    assert f"{out_dir / 'triplets.npy'} exists and was not written by an earlier dimalign {command} run" in (
        capsys.readouterr().err
    )
    assert np.array_equal(np.load(out_dir / "triplets.npy"), user_triplets)
    assert sorted(path.name for path in out_dir.iterdir()) == ["triplets.npy"]


def test_import_into_file_path_keeps_user_file(tmp_path, capsys):
    (tmp_path / "raw.txt").write_text("0 1 2\n", encoding="utf-8")
    target = tmp_path / "out.csv"
    target.write_text("my notes\n", encoding="utf-8")

    status = main(["import-triplets", str(tmp_path / "raw.txt"), "--n-objects", "3", "-o", str(target)])

    assert status == 1
    assert f"{target} exists and was not written by an earlier dimalign import-triplets run" in (
        capsys.readouterr().err
    )
    assert target.read_text(encoding="utf-8") == "my notes\n"


def test_import_folder_objects_disagree_with_n_objects(tmp_path, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "triplets.txt").write_text("0 1 2\n3 4 0\n", encoding="utf-8")
    _write_named_table(folder / "objects.tsv", list("abcde"))

    status = main(["import-triplets", str(folder), "-o", str(tmp_path / "out"), "--n-objects", "7"])

    assert status == 1
    error = capsys.readouterr().err
    assert f"--n-objects 7 disagrees with {folder / 'objects.tsv'}, which lists 5 objects" in error
    assert not (tmp_path / "out").exists()


def test_import_folder_objects_agree_with_n_objects(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "triplets.txt").write_text("0 1 2\n3 4 0\n", encoding="utf-8")
    _write_named_table(folder / "objects.tsv", list("abcde"))

    status = main(["import-triplets", str(folder), "-o", str(tmp_path / "out"), "--n-objects", "5"])

    assert status == 0
    assert read_object_table(tmp_path / "out" / "objects.tsv").object_ids == tuple("abcde")
    assert read_manifest(tmp_path / "out")["inputs"]["objects"]["sha256"] == sha256_file(folder / "objects.tsv")


def _write_file_with_table(folder: Path, names: list[str]) -> Path:
    """Write ``raw.txt`` (two triplets of objects 0 to 4) with an objects.tsv next to it."""
    folder.mkdir()
    source = folder / "raw.txt"
    source.write_text("0 1 2\n3 4 0\n", encoding="utf-8")
    _write_named_table(folder / "objects.tsv", names)
    return source


def test_import_file_reads_table_beside_it(tmp_path, capsys):
    source = _write_file_with_table(tmp_path / "data", list("abcde"))

    status = main(["import-triplets", str(source), "-o", str(tmp_path / "out")])

    assert status == 0
    table = tmp_path / "data" / "objects.tsv"
    assert (
        f"using the object table {table}, which lies next to the triplets, for the objects; "
        "pass --objects to use another table"
    ) in capsys.readouterr().err
    assert read_object_table(tmp_path / "out" / "objects.tsv").object_ids == tuple("abcde")
    manifest = read_manifest(tmp_path / "out")
    assert manifest["settings"]["n_objects"] == 5
    assert manifest["inputs"]["objects"]["sha256"] == sha256_file(table)
    assert np.load(tmp_path / "out" / "triplets.npy").tolist() == [[0, 1, 2], [3, 4, 0]]


def test_import_file_table_beside_too_short(tmp_path, capsys):
    source = _write_file_with_table(tmp_path / "data", list("abcd"))

    status = main(["import-triplets", str(source), "-o", str(tmp_path / "out")])

    assert status == 1
    error = capsys.readouterr().err
    assert "out of range" in error
    assert (
        f"The 4 objects come from {tmp_path / 'data' / 'objects.tsv'}, which dimalign import-triplets "
        "reads because it lies next to the triplets: pass the table that the triplets index with "
        "--objects, or move this one away"
    ) in error
    assert not (tmp_path / "out").exists()


def test_import_file_table_beside_disagrees(tmp_path, capsys):
    source = _write_file_with_table(tmp_path / "data", list("abcde"))

    status = main(["import-triplets", str(source), "-o", str(tmp_path / "out"), "--n-objects", "7"])

    assert status == 1
    assert (
        f"--n-objects 7 disagrees with {tmp_path / 'data' / 'objects.tsv'}, which lists 5 objects"
    ) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_import_objects_option_beats_table_beside(tmp_path, capsys):
    source = _write_file_with_table(tmp_path / "data", list("abcde"))
    names = tmp_path / "names.txt"
    names.write_text("".join(f"object{index}\n" for index in range(6)), encoding="utf-8")

    status = main(["import-triplets", str(source), "-o", str(tmp_path / "out"), "--objects", str(names)])

    assert status == 0
    assert f"using the object table {names} (--objects) for the objects" in capsys.readouterr().err
    assert read_object_table(tmp_path / "out" / "objects.tsv").object_ids == tuple(f"object{i}" for i in range(6))
    assert read_manifest(tmp_path / "out")["inputs"]["objects"]["sha256"] == sha256_file(names)


# --------------------------------------------------------------------------- validation fractions


@pytest.mark.parametrize(
    ("n_triplets", "fraction", "smallest"), [("10000", "0.00001", "0.0001"), ("5", "0.1", "0.2"), ("5", "0", "0.2")]
)
def test_simulate_val_fraction_holding_out_nothing_fails(tmp_path, capsys, n_triplets, fraction, smallest):
    """An empty val.npy is rejected by fit, so simulate rejects it like import-triplets does."""
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((30, 3)))
    out_dir = tmp_path / "out"

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(out_dir), "--n-triplets", n_triplets,
                   "--val-fraction", fraction])

    assert status == 1
    assert (
        f"--val-fraction {float(fraction)} holds out no triplet, since round({float(fraction)} x "
        f"{int(n_triplets):,} triplets) = 0: use at least {smallest}, or leave out --val-fraction to write "
        "triplets.npy"
    ) in capsys.readouterr().err
    assert not out_dir.exists()


def test_simulate_val_fraction_leaving_no_training_fails(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((30, 3)))
    out_dir = tmp_path / "out"

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(out_dir), "--n-triplets", "5",
                   "--val-fraction", "0.95"])

    assert status == 1
    assert (
        "--val-fraction 0.95 leaves no training triplet, since round(0.95 x 5 triplets) = 5: use a smaller "
        "fraction or more triplets"
    ) in capsys.readouterr().err
    assert not out_dir.exists()


@pytest.mark.parametrize("content", ["", "a,b,c\n", "# no judgements yet\n"])
def test_import_split_of_empty_file_fails(tmp_path, capsys, content):
    source = tmp_path / "trials.csv"
    source.write_text(content, encoding="utf-8")
    out_dir = tmp_path / "out"

    status = main(["import-triplets", str(source), "-o", str(out_dir), "--n-objects", "10", "--split", "0.1"])

    assert status == 1
    assert (
        f"{source} contains no triplets, so --split/--val-fraction 0.1 holds out none: check that it is the "
        "file of judgements"
    ) in capsys.readouterr().err
    assert not out_dir.exists()


@pytest.mark.parametrize("content", ["", "a,b,c\n", "a,b,c,\n"])
def test_import_empty_file_fails(tmp_path, capsys, content):
    source = tmp_path / "trials.csv"
    source.write_text(content, encoding="utf-8")
    out_dir = tmp_path / "out"

    status = main(["import-triplets", str(source), "-o", str(out_dir), "--n-objects", "10"])

    assert status == 1
    assert (
        f"{source} contains no triplets, so there is nothing to import: check that it is the file of "
        "judgements"
    ) in capsys.readouterr().err
    assert not out_dir.exists()


def test_import_absurd_object_count_fails_cleanly(tmp_path, capsys, monkeypatch):
    """The per-object counts of 10^13 objects need 80 TB, more than any machine has.

    Where the available memory is unknown, numpy's failed allocation is the error.
    """
    import dimalign.triplets.commands as commands

    monkeypatch.setattr(commands, "available_memory_bytes", lambda: None)
    source = tmp_path / "raw.txt"
    source.write_text("0 1 2\n3 4 0\n", encoding="utf-8")
    out_dir = tmp_path / "out"

    status = main(["import-triplets", str(source), "-o", str(out_dir), "--n-objects", "10000000000000"])

    assert status == 1
    error = capsys.readouterr().err
    assert "10,000,000,000,000 objects need more memory than is available" in error
    assert "Unable to allocate" in error
    assert "check --n-objects" in error
    assert not out_dir.exists()


def test_simulate_feature_file_records_its_objects(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    np.save(folder / "features_classifier.npy", np.random.default_rng(0).random((8, 3)))
    _write_named_table(folder / "objects.tsv", [f"img{index}" for index in range(8)])
    out_dir = tmp_path / "out"

    status = main(["simulate", str(folder / "features_classifier.npy"), "-o", str(out_dir), "--n-triplets", "20"])

    assert status == 0
    assert read_object_table(out_dir / "objects.tsv").object_ids[0] == "img0"
    recorded = read_manifest(out_dir)["inputs"]["objects"]
    assert recorded["path"] == str((folder / "objects.tsv").resolve())
    assert recorded["sha256"] == sha256_file(folder / "objects.tsv")


@pytest.mark.parametrize("command", ["import-triplets", "simulate"])
def test_negative_seed_names_the_option(tmp_path, capsys, command):
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((10, 3)))
    (tmp_path / "raw.txt").write_text("0 1 2\n3 4 0\n", encoding="utf-8")
    if command == "simulate":
        arguments = ["simulate", str(tmp_path / "features.npy"), "--n-triplets", "20"]
    else:
        arguments = ["import-triplets", str(tmp_path / "raw.txt"), "--n-objects", "10", "--split", "0.5"]

    with pytest.raises(SystemExit):
        main([*arguments, "-o", str(tmp_path / "out"), "--seed", "-1"])

    assert "argument --seed: -1 is invalid: use an integer of at least 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_simulate_interrupted_rerun_keeps_earlier_output(tmp_path, monkeypatch):
    """A rerun into its own folder replaces the earlier files only once all new ones exist."""
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((10, 3)))
    out_dir = tmp_path / "out"
    arguments = ["simulate", str(tmp_path / "features.npy"), "-o", str(out_dir), "--n-triplets", "50",
                 "--val-fraction", "0.2"]
    assert main([*arguments, "--seed", "1"]) == 0
    before = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    _interrupt_after(monkeypatch, "train.npy")

    status = main([*arguments, "--seed", "2"])

    assert status == 143
    assert {path.name: path.read_bytes() for path in out_dir.iterdir()} == before


@pytest.mark.parametrize("folder", ["existing", "new"])
def test_interrupted_run_keeps_files_added_by_others(tmp_path, monkeypatch, folder):
    """A stopped run removes only its own files, not what another program wrote meanwhile.

    A folder that the run created is kept too, with the other files in it.
    """
    import dimalign.io.triplets as triplet_io
    from dimalign.cli import Terminated

    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((10, 3)))
    out_dir = tmp_path / "study" if folder == "existing" else tmp_path / "new" / "study"
    save = triplet_io.save_triplets

    def save_while_others_write(triplets, path):
        save(triplets, path)
        (out_dir / "notes").mkdir(exist_ok=True)
        (out_dir / "notes" / "new.txt").write_text("written meanwhile\n", encoding="utf-8")
        (out_dir / "other.csv").write_text("1,2\n", encoding="utf-8")
        raise Terminated(143)

    if folder == "existing":
        (out_dir / "notes").mkdir(parents=True)
    monkeypatch.setattr(triplet_io, "save_triplets", save_while_others_write)

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(out_dir),
                   "--n-triplets", "50"])

    assert status == 143
    assert (out_dir / "notes" / "new.txt").read_text(encoding="utf-8") == "written meanwhile\n"
    assert sorted(path.name for path in out_dir.iterdir()) == ["notes", "other.csv"]


@pytest.mark.parametrize("failing", ["val.npy", "objects.tsv", "manifest.json"])
def test_rerun_stopped_while_moving_keeps_earlier_output(tmp_path, monkeypatch, failing):
    """A stop between the moves of the new files puts the earlier files back."""
    import os

    from dimalign.cli import Terminated

    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((10, 3)))
    out_dir = tmp_path / "out"
    arguments = ["simulate", str(tmp_path / "features.npy"), "-o", str(out_dir), "--n-triplets", "50",
                 "--val-fraction", "0.2"]
    assert main([*arguments, "--seed", "1"]) == 0
    before = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    replace = os.replace

    def replace_until(source, target):
        if Path(target) == out_dir / failing and Path(source).parent.name.startswith(".partial-"):
            raise Terminated(143)
        replace(source, target)

    monkeypatch.setattr(os, "replace", replace_until)

    status = main([*arguments, "--seed", "2"])

    assert status == 143
    assert {path.name: path.read_bytes() for path in out_dir.iterdir()} == before


def test_leftover_partial_folder_is_reported(tmp_path, capsys):
    """A hidden folder that SIGKILL left behind is named in a warning, not deleted."""
    (tmp_path / "raw.txt").write_text("0 1 2\n", encoding="utf-8")
    out_dir = tmp_path / "out"
    leftover = out_dir / ".partial-abc123"
    leftover.mkdir(parents=True)
    (leftover / ".train.x1.tmp.npy").write_bytes(b"\0" * 2048)

    status = main(["import-triplets", str(tmp_path / "raw.txt"), "--n-objects", "3",
                   "-o", str(out_dir)])

    assert status == 0
    assert f"WARNING dimalign.io.files: {leftover} (2,048 bytes) is the hidden folder of an " \
        "interrupted dimalign run" in capsys.readouterr().err
    assert leftover.is_dir()
    assert load_triplets(out_dir).tolist() == [[0, 1, 2]]


def test_import_output_named_objects_tsv_fails(tmp_path, capsys):
    """A triplet file named objects.tsv would be read as its folder's object table."""
    (tmp_path / "raw.txt").write_text("0 1 2\n", encoding="utf-8")
    target = tmp_path / "out" / "objects.tsv"

    status = main(["import-triplets", str(tmp_path / "raw.txt"), "--n-objects", "3", "-o", str(target)])

    assert status == 1
    assert f"-o {target}: objects.tsv is the name of the object table" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "outputs",
    [{"files": ["triplets.npy"]}, {"files": {"triplets": 5}}, [], {"files": "triplets.npy"}],
    ids=["list of files", "number as file", "list as outputs", "text as files"],
)
def test_damaged_manifest_of_earlier_run_is_named(tmp_path, capsys, outputs):
    (tmp_path / "raw.txt").write_text("0 1 2\n", encoding="utf-8")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    manifest = out_dir / "manifest.json"
    manifest.write_text(json.dumps({"step": "import-triplets", "outputs": outputs}), encoding="utf-8")

    status = main(["import-triplets", str(tmp_path / "raw.txt"), "--n-objects", "3", "-o", str(out_dir)])

    assert status == 1
    error = capsys.readouterr().err
    assert f"{manifest} does not list the files of the earlier dimalign import-triplets run" in error
    assert sorted(path.name for path in out_dir.iterdir()) == ["manifest.json"]


@pytest.mark.parametrize("command", ["import-triplets", "simulate"])
def test_read_only_output_folder_fails_before_work(tmp_path, capsys, monkeypatch, command, unwritable_folder):
    """A folder that cannot be written is named before the triplets are read or simulated."""
    import dimalign.io.triplets as triplet_io
    import dimalign.triplets as triplets_package

    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((10, 3)))
    (tmp_path / "raw.txt").write_text("0 1 2\n", encoding="utf-8")
    out_dir = unwritable_folder

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output folder was checked")

    monkeypatch.setattr(triplet_io, "load_triplets", no_work)
    monkeypatch.setattr(triplets_package, "sample_triplets", no_work)
    if command == "simulate":
        arguments = ["simulate", str(tmp_path / "features.npy"), "--n-triplets", "20"]
    else:
        arguments = ["import-triplets", str(tmp_path / "raw.txt"), "--n-objects", "10"]

    status = main([*arguments, "-o", str(out_dir / "run")])

    assert status == 1
    assert f"cannot write into {out_dir}" in capsys.readouterr().err
    assert list(out_dir.iterdir()) == []


def test_simulate_output_file_name_fails(tmp_path, capsys):
    """simulate writes a folder, so -o sim.npy would make a folder that np.load cannot read."""
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((10, 3)))
    target = tmp_path / "sim.npy"

    status = main(["simulate", str(tmp_path / "features.npy"), "--n-triplets", "20", "-o", str(target)])

    assert status == 1
    error = capsys.readouterr().err
    assert f"-o {target} looks like a file name, but simulate writes an output folder" in error
    assert not target.exists()


def test_folder_named_manifest_json_is_kept(tmp_path, capsys):
    (tmp_path / "raw.txt").write_text("0 1 2\n", encoding="utf-8")
    out_dir = tmp_path / "out"
    (out_dir / "manifest.json").mkdir(parents=True)
    (out_dir / "manifest.json" / "notes.txt").write_text("mine\n", encoding="utf-8")

    status = main(["import-triplets", str(tmp_path / "raw.txt"), "--n-objects", "3", "-o", str(out_dir)])

    assert status == 1
    assert f"{out_dir / 'manifest.json'} is not a file, but dimalign import-triplets writes its record" in (
        capsys.readouterr().err
    )
    assert (out_dir / "manifest.json" / "notes.txt").read_text(encoding="utf-8") == "mine\n"
    assert sorted(path.name for path in out_dir.iterdir()) == ["manifest.json"]


def test_rerun_keeps_folder_in_place_of_earlier_file(tmp_path, capsys):
    (tmp_path / "raw.txt").write_text("0 1 2\n", encoding="utf-8")
    out_dir = tmp_path / "out"
    arguments = ["import-triplets", str(tmp_path / "raw.txt"), "--n-objects", "3", "-o", str(out_dir)]
    assert main(arguments) == 0
    (out_dir / "objects.tsv").unlink()
    (out_dir / "objects.tsv").mkdir()
    (out_dir / "objects.tsv" / "notes.txt").write_text("mine\n", encoding="utf-8")

    status = main(arguments)

    assert status == 1
    assert "objects.tsv" in capsys.readouterr().err
    assert (out_dir / "objects.tsv" / "notes.txt").read_text(encoding="utf-8") == "mine\n"
    assert sorted(path.name for path in out_dir.iterdir()) == ["manifest.json", "objects.tsv", "triplets.npy"]


def test_import_own_output_folder_names_its_table(tmp_path, capsys):
    """Importing a folder into itself names the folder's objects.tsv, not an --objects option."""
    (tmp_path / "raw.txt").write_text("0 1 2\n", encoding="utf-8")
    out_dir = tmp_path / "out"
    assert main(["import-triplets", str(tmp_path / "raw.txt"), "--n-objects", "3", "-o", str(out_dir)]) == 0

    status = main(["import-triplets", str(out_dir), "-o", str(out_dir)])

    assert status == 1
    error = capsys.readouterr().err
    assert "--objects" not in error
    assert f"is the object table of the input folder {out_dir / 'objects.tsv'}" in error


@pytest.mark.parametrize("fraction", ["0.3", "0.5", "0.7"])
def test_split_of_one_triplet_fails(tmp_path, capsys, fraction):
    """One triplet cannot be split, so no fraction below 1 is suggested."""
    (tmp_path / "raw.txt").write_text("0 1 2\n", encoding="utf-8")

    status = main(["import-triplets", str(tmp_path / "raw.txt"), "--n-objects", "3", "-o",
                   str(tmp_path / "out"), "--split", fraction])

    assert status == 1
    error = capsys.readouterr().err
    assert "1 triplet cannot be split into a training and a validation part" in error
    assert "leave out --split to write triplets.npy" in error
    assert "use at least 1," not in error


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_import_summary_matches_brute_force(tmp_path, seed):
    """The manifest's counts of a small random 1-based file, recounted with Python loops."""
    rng = np.random.default_rng(seed)
    n_objects = 9
    # Few objects and 40 rows make repeats, conflicts and an unseen object likely.
    pool = rng.choice(n_objects, size=7, replace=False)
    rows = [rng.choice(pool, size=3, replace=False).tolist() for _ in range(40)]
    source = tmp_path / "trials.csv"
    source.write_text(
        "subject,i,j,odd\n" + "".join(f"s{n % 3},{a + 1},{b + 1},{c + 1}\n" for n, (a, b, c) in enumerate(rows)),
        encoding="utf-8",
    )

    assert main(["import-triplets", str(source), "-o", str(tmp_path / "out"), "--n-objects", str(n_objects),
                 "--one-based", "--columns", "i,j,odd"]) == 0
    outputs = read_manifest(tmp_path / "out")["outputs"]

    judgements, odd_ones = set(), {}
    counts = [0] * n_objects
    for a, b, c in rows:
        judgements.add((frozenset((a, b, c)), c))
        odd_ones.setdefault(frozenset((a, b, c)), set()).add(c)
        for index in (a, b, c):
            counts[index] += 1
    assert 40 - len(judgements) > 0, "the file should contain duplicates"
    assert sum(len(odd) > 1 for odd in odd_ones.values()) > 0, "the file should contain conflicts"
    assert outputs["n_triplets"] == 40
    assert outputs["n_unique_sets"] == len(odd_ones)
    assert outputs["n_duplicates"] == 40 - len(judgements)
    assert outputs["n_conflicting_sets"] == sum(len(odd) > 1 for odd in odd_ones.values())
    assert outputs["unseen_objects"] == [index for index in range(n_objects) if counts[index] == 0]
    assert outputs["n_unseen_objects"] == n_objects - 7
    assert outputs["min_count"] == min(counts)
    assert outputs["median_count"] == statistics.median(counts)
    assert outputs["max_count"] == max(counts)
    assert np.load(tmp_path / "out" / "triplets.npy").tolist() == rows


def test_simulate_beyond_available_memory_fails_first(tmp_path, capsys, monkeypatch):
    """A count far beyond the memory fails with an estimate before any array is allocated."""
    import dimalign.triplets.commands as commands

    np.save(tmp_path / "features.npy", np.random.default_rng(1).random((1854, 4)).astype(np.float32))
    monkeypatch.setattr(commands, "available_memory_bytes", lambda: 2 * 10**9)
    out_dir = tmp_path / "sim"

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(out_dir),
                   "--n-triplets", "500000000"])

    assert status == 1
    message = capsys.readouterr().err
    assert "--n-triplets 500,000,000 needs about 60.0 GB of memory" in message
    assert "2.0 GB is available" in message
    assert "lower --n-triplets" in message
    assert not out_dir.exists()


def test_simulate_memory_estimate_counts_gram_matrix(tmp_path, capsys, monkeypatch):
    import dimalign.triplets.commands as commands

    np.save(tmp_path / "features.npy", np.random.default_rng(1).random((100, 4)).astype(np.float32))
    monkeypatch.setattr(commands, "available_memory_bytes", lambda: 10**5)

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(tmp_path / "sim"),
                   "--n-triplets", "1000", "--method", "gram"])

    assert status == 1
    assert "the 40.0 kB Gram matrix" in capsys.readouterr().err


def test_simulate_with_unknown_memory_runs(tmp_path, monkeypatch):
    import dimalign.triplets.commands as commands

    np.save(tmp_path / "features.npy", np.random.default_rng(1).random((10, 4)))
    monkeypatch.setattr(commands, "available_memory_bytes", lambda: None)

    assert main(["simulate", str(tmp_path / "features.npy"), "-o", str(tmp_path / "sim"),
                 "--n-triplets", "50"]) == 0


def test_simulate_memory_estimate_skips_unused_gram_matrix(tmp_path, monkeypatch):
    """3 triplets of 1,000 objects touch too few pairs for auto to take the 4 MB Gram matrix."""
    import dimalign.triplets.commands as commands

    np.save(tmp_path / "features.npy", np.random.default_rng(1).random((1000, 4)).astype(np.float32))
    monkeypatch.setattr(commands, "available_memory_bytes", lambda: 10**6)

    assert main(["simulate", str(tmp_path / "features.npy"), "-o", str(tmp_path / "sim"),
                 "--n-triplets", "3"]) == 0


def test_simulate_objects_replaces_mismatched_folder_table(tmp_path):
    """--objects names the rows, so a stale objects.tsv next to the features is not read."""
    features_dir = tmp_path / "features"
    features_dir.mkdir()
    np.save(features_dir / "features.npy", np.random.default_rng(0).random((6, 2)))
    write_object_table(ObjectTable.from_ids(["a", "b"]), features_dir / "objects.tsv")
    names = tmp_path / "unique_id.txt"
    names.write_text("".join(f"thing{index}\n" for index in range(6)), encoding="utf-8")

    for index, source in enumerate((features_dir, features_dir / "features.npy")):
        out_dir = tmp_path / f"out{index}"
        status = main(["simulate", str(source), "-o", str(out_dir), "--n-triplets", "5",
                       "--objects", str(names)])

        assert status == 0
        assert read_object_table(out_dir / "objects.tsv").object_ids[0] == "thing0"
        assert read_manifest(out_dir)["inputs"]["objects"]["sha256"] == sha256_file(names)


def test_import_object_count_beyond_memory_fails_first(tmp_path, capsys, monkeypatch):
    """A count whose arrays would each fit, but not together, fails before they are made."""
    import dimalign.triplets.commands as commands

    monkeypatch.setattr(commands, "available_memory_bytes", lambda: 10**8)
    source = tmp_path / "raw.txt"
    source.write_text("0 1 2\n3 4 0\n", encoding="utf-8")
    out_dir = tmp_path / "out"

    status = main(["import-triplets", str(source), "-o", str(out_dir), "--n-objects", "1000000"])

    assert status == 1
    error = capsys.readouterr().err
    assert "1,000,000 objects need about 200.0 MB of memory" in error
    assert "100.0 MB is available" in error
    assert "check --n-objects" in error
    assert not out_dir.exists()


def test_import_memory_error_without_message_says_so(tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr("dimalign.io.triplets.summarize_triplets", fail)
    source = tmp_path / "raw.txt"
    source.write_text("0 1 2\n", encoding="utf-8")

    status = main(["import-triplets", str(source), "-o", str(tmp_path / "out"), "--n-objects", "5"])

    assert status == 1
    error = capsys.readouterr().err
    assert "(no details)" in error
    assert "()" not in error


@pytest.mark.parametrize("n_rows", [0, 2])
def test_simulate_too_few_feature_rows_names_file(tmp_path, capsys, n_rows):
    np.save(tmp_path / "features.npy", np.ones((n_rows, 3)))

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(tmp_path / "out"),
                   "--n-triplets", "1"])

    assert status == 1
    error = capsys.readouterr().err
    assert f"features.npy has {n_rows} rows (objects), but a triplet needs 3 objects" in error
    assert not (tmp_path / "out").exists()


def test_simulate_features_without_columns_rejected(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.ones((10, 0)))

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(tmp_path / "out"),
                   "--n-triplets", "5"])

    assert status == 1
    assert capsys.readouterr().err.endswith(
        f"dimalign simulate: error: {tmp_path / 'features.npy'} has no feature columns (shape (10, 0)), "
        "so every choice would be a tie broken at random: pass features with at least one column\n"
    )
    assert not (tmp_path / "out").exists()


def _fake_proc(tmp_path: Path, cgroup: str, available_kb: int) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available_kb} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup)
    return proc


def _fake_cgroup(tmp_path: Path, version: int, limit: int, usage: int, stat: str | None = None) -> Path:
    """Write the proc and cgroup files of a process in the Slurm job cgroup slurm/job_7 on a 20 GB machine."""
    if version == 2:
        proc = _fake_proc(tmp_path, "0::/slurm/job_7\n", 20_000_000)
        folder = tmp_path / "cgroup" / "slurm" / "job_7"
        names = ("memory.max", "memory.current")
    else:
        proc = _fake_proc(tmp_path, "4:memory:/slurm/job_7\n3:cpu:/\n", 20_000_000)
        folder = tmp_path / "cgroup" / "memory" / "slurm" / "job_7"
        names = ("memory.limit_in_bytes", "memory.usage_in_bytes")
    folder.mkdir(parents=True)
    (folder / names[0]).write_text(f"{limit}\n")
    (folder / names[1]).write_text(f"{usage}\n")
    if stat is not None:
        (folder / "memory.stat").write_text(stat)
    return proc


@pytest.mark.parametrize("version", [1, 2])
def test_available_memory_respects_cgroup_limit(tmp_path, version):
    """A Slurm job or container limited to 1 GB on a 20 GB machine has 1 GB minus its usage."""
    from dimalign.memory import available_memory_bytes

    proc = _fake_cgroup(tmp_path, version, limit=1_000_000_000, usage=300_000_000)

    assert available_memory_bytes(proc_root=proc, cgroup_root=tmp_path / "cgroup") == 700_000_000


@pytest.mark.parametrize(
    ("version", "stat"),
    [(2, "anon 290000000\nfile 700000000\ninactive_file 600000000\n"),
     (1, "cache 700000000\ninactive_file 10\ntotal_inactive_file 600000000\n")],
)
def test_available_memory_counts_cgroup_page_cache(tmp_path, version, stat):
    """A job that read large files is near its limit in usage, but the kernel can drop that cache."""
    from dimalign.memory import available_memory_bytes

    proc = _fake_cgroup(tmp_path, version, limit=1_000_000_000, usage=990_000_000, stat=stat)

    assert available_memory_bytes(proc_root=proc, cgroup_root=tmp_path / "cgroup") == 610_000_000


def test_available_memory_respects_parent_cgroup_limit(tmp_path):
    """Slurm limits the job's cgroup, and the process runs in a step below it."""
    from dimalign.memory import available_memory_bytes

    proc = _fake_proc(tmp_path, "0::/slurm/job_7/step_0\n", 20_000_000)
    job = tmp_path / "cgroup" / "slurm" / "job_7"
    (job / "step_0").mkdir(parents=True)
    (job / "memory.max").write_text("1000000000\n")
    (job / "memory.current").write_text("400000000\n")
    (job / "step_0" / "memory.max").write_text("max\n")
    (job / "step_0" / "memory.current").write_text("100000000\n")

    assert available_memory_bytes(proc_root=proc, cgroup_root=tmp_path / "cgroup") == 600_000_000


def test_available_memory_without_cgroup_limit(tmp_path):
    from dimalign.memory import available_memory_bytes

    proc = _fake_proc(tmp_path, "0::/\n", 2_000)
    (tmp_path / "cgroup").mkdir()
    (tmp_path / "cgroup" / "memory.max").write_text("max\n")

    assert available_memory_bytes(proc_root=proc, cgroup_root=tmp_path / "cgroup") == 2_048_000


def test_available_memory_without_proc_is_physical_memory(tmp_path):
    """Without /proc (macOS) the physical memory is an upper bound."""
    from dimalign.memory import available_memory_bytes

    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert available_memory_bytes(proc_root=tmp_path / "missing", cgroup_root=tmp_path) == physical


def test_simulate_folder_table_mismatch_says_what_to_do(tmp_path, capsys):
    features_dir = tmp_path / "features"
    features_dir.mkdir()
    np.save(features_dir / "features.npy", np.ones((6, 2)))
    write_object_table(ObjectTable.from_ids(["a", "b"]), features_dir / "objects.tsv")

    status = main(["simulate", str(features_dir), "-o", str(tmp_path / "out"), "--n-triplets", "5"])

    assert status == 1
    error = capsys.readouterr().err
    assert "features.npy has 6 rows but" in error
    assert "objects.tsv lists 2 objects" in error
    assert "--objects" in error


def test_simulate_nan_features_name_file(tmp_path, capsys):
    features = np.random.default_rng(0).random((6, 3))
    features[4, 1] = np.nan
    np.save(tmp_path / "features.npy", features)
    out_dir = tmp_path / "out"

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(out_dir), "--n-triplets", "5"])

    assert status == 1
    assert f"{tmp_path / 'features.npy'}: feature rows 4 contain NaN or inf (1 of 6 rows)" in (
        capsys.readouterr().err
    )
    assert not out_dir.exists()


def test_simulate_infinite_temperature_rejected(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((6, 3)))

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(tmp_path / "out"),
                   "--n-triplets", "5", "--rule", "softmax", "--temperature", "inf"])

    assert status == 1
    assert "error: --temperature inf is invalid: use a finite number above 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_simulate_generated_names_suggest_objects(tmp_path, capsys):
    np.save(tmp_path / "features.npy", np.random.default_rng(1).random((6, 4)))

    status = main(["simulate", str(tmp_path / "features.npy"), "-o", str(tmp_path / "out"), "--n-triplets", "10"])

    assert status == 0
    assert (
        "the features have no object table; named the objects object_0 .. object_5. Pass --objects TABLE "
        "(one id per line in row order) to name them, so that compare can match them to another "
        "embedding's objects, such as THINGS ids"
    ) in capsys.readouterr().err
