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
