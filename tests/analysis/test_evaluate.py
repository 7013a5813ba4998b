"""Tests of evaluate_embedding, the 48-object check and the ``dimalign evaluate`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from dimalign.analysis.evaluate import evaluate_embedding, format_metrics
from dimalign.analysis.similarity import similarity_matrix
from dimalign.analysis.things48 import (
    load_things48,
    match_concept_ids,
    read_rdm48,
    things48_correlation,
)
from dimalign.cli import main
from dimalign.io.runs import EmbeddingResult, save_embedding


@pytest.fixture(scope="module")
def things48(things_dir):
    return load_things48(things_dir)


@pytest.fixture(scope="module")
def spose49(things_dir) -> np.ndarray:
    return np.loadtxt(things_dir / "spose_embedding_49d_sorted.txt")


# -- the 48-object data -------------------------------------------------------


def test_things48_loads_and_matches_names(things48):
    assert things48.rdm.shape == (48, 48)
    assert things48.n_concepts == 1854
    assert len(things48.words) == 48
    assert things48.words[0] == "pizza"
    assert things48.excluded.sum() == 5
    np.testing.assert_array_equal(np.diag(things48.rdm), np.zeros(48))
    np.testing.assert_array_equal(things48.rdm, things48.rdm.T)


def test_things48_repr_omits_concept_ids(things48):
    """A notebook shows the repr, and the 1,854 concept ids would fill about 22,000 characters."""
    text = repr(things48)
    assert text.startswith("Things48(words=('pizza', 'beaver', ")
    assert "n_concepts=1854" in text
    assert "concept_ids" not in text
    assert "zucchini" not in text
    assert len(text) < 5000
    assert len(things48.concept_ids) == 1854


def test_things48_aliases_and_spaces(things_dir, things48):
    concept_ids = (things_dir / "unique_id.txt").read_text().split()
    position = {word: row for row, word in enumerate(things48.words)}

    assert concept_ids[things48.indices[position["camera"]]] == "camera1"
    assert concept_ids[things48.indices[position["file"]]] == "file1"
    assert concept_ids[things48.indices[position["music box"]]] == "music_box"


def test_match_concept_ids_lists_missing_names():
    with pytest.raises(ValueError, match=r"2 of the 48 objects.*\['unicorn', 'dragon'\]"):
        match_concept_ids(["cat", "unicorn", "dragon"], ["cat", "dog"])


def test_words48_with_byte_order_mark(things_dir, tmp_path):
    """A spreadsheet program saves a CSV with a UTF-8 byte order mark before the header."""
    from dimalign.analysis.things48 import read_words48

    marked = tmp_path / "words48.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + (things_dir / "words48.csv").read_bytes())

    words, excluded = read_words48(marked)

    assert words == read_words48(things_dir / "words48.csv")[0]
    assert words[0] == "pizza"
    assert excluded.sum() == 5


def test_words48_not_utf8_names_file(tmp_path):
    from dimalign.analysis.things48 import read_words48

    latin1 = tmp_path / "words48.csv"
    latin1.write_bytes(b"Word,exclude\ncaf\xe9,\n")

    with pytest.raises(ValueError, match=r"words48.csv is not UTF-8 text \(byte 0xe9 at offset 16\)"):
        read_words48(latin1)


def test_read_rdm48_needs_one_matrix(tmp_path):
    two = tmp_path / "two.mat"
    scipy.io.savemat(two, {"a": np.zeros((48, 48)), "b": np.ones((48, 48))})
    none = tmp_path / "none.mat"
    scipy.io.savemat(none, {"a": np.zeros((10, 10))})

    with pytest.raises(ValueError, match="exactly one 48 x 48 matrix, found 2"):
        read_rdm48(two)
    with pytest.raises(ValueError, match="found 0"):
        read_rdm48(none)
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        read_rdm48(tmp_path / "missing.mat")


def test_things48_spose_correlation(things48, spose49):
    # Measured 0.8872 (Pearson) for the published 49-d SPoSE embedding.
    value = things48_correlation(spose49, data=things48)

    assert value > 0.85
    assert value == pytest.approx(0.8872, abs=5e-4)


def test_things48_uses_full_similarity_submatrix(things48, spose49):
    from dimalign.analysis.rsa import rsa

    keep = ~things48.excluded
    indices = things48.indices[keep]
    full = similarity_matrix(spose49)[np.ix_(indices, indices)]
    expected = rsa(full, 1.0 - things48.rdm[np.ix_(keep, keep)])

    value = things48_correlation(spose49, data=things48, exclude_flagged=True)

    assert value == pytest.approx(expected, rel=1e-12)


def test_things48_rejects_wrong_row_count(things48):
    with pytest.raises(ValueError, match=r"1854 rows\), got shape \(100, 3\)"):
        things48_correlation(np.ones((100, 3)), data=things48)



def copy_things48_files(things_dir, folder, skip=()):
    folder.mkdir()
    for name in ("RDM48_triplet.mat", "words48.csv", "unique_id.txt"):
        if name not in skip:
            (folder / name).write_bytes((things_dir / name).read_bytes())
    return folder


def test_load_things48_names_damaged_rdm(things_dir, tmp_path):
    folder = copy_things48_files(things_dir, tmp_path / "things", skip=("RDM48_triplet.mat",))
    (folder / "RDM48_triplet.mat").write_text("not a MATLAB file")

    with pytest.raises(ValueError, match=r"RDM48_triplet\.mat cannot be read as a MATLAB file"):
        load_things48(folder)


@pytest.mark.parametrize("missing", ["RDM48_triplet.mat", "words48.csv", "unique_id.txt"])
def test_load_things48_names_missing_file(things_dir, tmp_path, missing):
    folder = copy_things48_files(things_dir, tmp_path / "things", skip=(missing,))

    with pytest.raises(FileNotFoundError) as raised:
        load_things48(folder)

    message = str(raised.value)
    assert f"{folder} lacks {missing}" in message
    assert "(CLI: --things-dir)" in message
    assert "object table" not in message


def test_load_things48_names_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"THINGS data directory .*nowhere not found"):
        load_things48(tmp_path / "nowhere")


def test_load_things48_file_names_its_folder(things_dir):
    with pytest.raises(FileNotFoundError) as raised:
        load_things48(things_dir / "unique_id.txt")

    message = str(raised.value)
    assert message.startswith(
        f"THINGS data directory {things_dir / 'unique_id.txt'} is a file, not a folder: "
        f"pass the folder that contains it, {things_dir}. "
    )


def test_load_things48_parent_names_subfolder(things_dir, tmp_path):
    copy_things48_files(things_dir, tmp_path / "things")

    with pytest.raises(FileNotFoundError) as raised:
        load_things48(tmp_path)

    message = str(raised.value)
    assert message.startswith(
        f"{tmp_path} lacks RDM48_triplet.mat, but its subfolder {tmp_path / 'things'} has all three "
        "files: pass that folder. "
    )


def test_load_things48_names_words_file_not_utf8(things_dir, tmp_path):
    folder = copy_things48_files(things_dir, tmp_path / "things", skip=("words48.csv",))
    text = (things_dir / "words48.csv").read_bytes().replace(b"beaver", b"b\xe9aver")
    (folder / "words48.csv").write_bytes(text)

    with pytest.raises(ValueError, match=r"words48\.csv is not UTF-8 text \(byte 0xe9"):
        load_things48(folder)


def test_load_things48_rejects_repeated_word(things_dir, tmp_path):
    folder = copy_things48_files(things_dir, tmp_path / "things", skip=("words48.csv",))
    text = (things_dir / "words48.csv").read_text(encoding="utf-8").replace("pizza,", "bucket,")
    (folder / "words48.csv").write_text(text, encoding="utf-8")

    with pytest.raises(ValueError, match=r"words48\.csv lists 'bucket' on rows 1 and \d+"):
        load_things48(folder)


def test_load_things48_names_files_of_unknown_word(things_dir, tmp_path):
    folder = copy_things48_files(things_dir, tmp_path / "things", skip=("words48.csv",))
    text = (things_dir / "words48.csv").read_text(encoding="utf-8").replace("beaver,", "beever,")
    (folder / "words48.csv").write_text(text, encoding="utf-8")

    with pytest.raises(ValueError) as raised:
        load_things48(folder)

    message = str(raised.value)
    assert "1 of the 48 objects are not THINGS concept ids: ['beever']" in message
    assert str(folder / "words48.csv") in message
    assert str(folder / "unique_id.txt") in message


def test_evaluate_checks_things_dir_before_scoring(tmp_path, monkeypatch):
    import dimalign.analysis.evaluate

    def fail(*args, **kwargs):
        raise AssertionError("scored the triplets before reading the THINGS files")

    monkeypatch.setattr(dimalign.analysis.evaluate, "odd_one_out_accuracy", fail)
    with pytest.raises(FileNotFoundError, match="THINGS data directory"):
        evaluate_embedding(np.eye(5), [[0, 1, 2]], things_dir=tmp_path / "nowhere")

# -- evaluate_embedding --------------------------------------------------------


def test_evaluate_hand_computed():
    embedding = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    # Row 0 is a hit, row 1 a tie of all three pairs (1/3), rows 2-3 judge the
    # set {0, 1, 2} twice with different odd ones out.
    triplets = np.array([[0, 1, 3], [3, 2, 1], [0, 1, 2], [0, 2, 1]])
    p_hit = math.e / (math.e + 2)
    p_miss = 1 / (math.e + 2)
    expected_nll = -(math.log(p_hit) + math.log(1 / 3) + math.log(p_hit) + math.log(p_miss)) / 4

    with pytest.warns(UserWarning, match="rests on 2 responses in 1 repeated object sets") as caught:
        metrics = evaluate_embedding(embedding, triplets)

    # The warning points at this line, not into the library.
    assert [Path(warning.filename).name for warning in caught] == ["test_evaluate.py"]
    assert metrics["n_objects"] == 4
    assert metrics["n_dims"] == 2
    assert metrics["n_triplets"] == 4
    assert metrics["accuracy"] == pytest.approx((1 + 1 / 3 + 1 + 0) / 4, abs=1e-15)
    assert metrics["n_ties"] == 1
    assert metrics["nll"] == pytest.approx(expected_nll, rel=1e-14)
    assert metrics["noise_ceiling"] == 0.0
    assert metrics["noise_ceiling_sets"] == 1
    assert metrics["noise_ceiling_responses"] == 2
    assert "things48_r" not in metrics


def test_evaluate_warns_when_most_triplets_tie():
    """Ties get the 1/m credit of a guess, so an accuracy made mostly of them is flagged."""
    import warnings

    # Rows 3 to 5 are all zero, as after a fit that pruned nearly every dimension.
    embedding = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    triplets = np.array([[0, 1, 2], [3, 4, 5], [0, 3, 4], [2, 3, 5]])

    with pytest.warns(UserWarning) as caught:
        metrics = evaluate_embedding(embedding, triplets)

    assert metrics["n_ties"] == 3
    assert [str(warning.message) for warning in caught] == [
        "3 of 4 triplets (75%) have tied dot products, and each of them counts 1/m of a hit for its "
        "m tied pairs, as a random guess would, so the accuracy says little about the embedding. "
        "Such ties come from objects with equal rows, such as the all-zero rows of a fit that pruned "
        "nearly every dimension: fit for more epochs, or check the embedding"
    ]
    # Half of the triplets tied is not yet flagged.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_embedding(embedding, triplets[:2])


def test_evaluate_without_repeats_has_no_ceiling(recwarn):
    metrics = evaluate_embedding(EmbeddingResult(np.eye(4)), [[0, 1, 2], [1, 2, 3]])

    assert "noise_ceiling" not in metrics
    assert not [warning for warning in recwarn if "noise ceiling" in str(warning.message)]


def test_evaluate_fitted_estimator_scores_its_embedding():
    """A fitted VICE or SPoSE is scored by its embedding_, like its saved run."""
    from dimalign.embedding import SPoSE

    estimator = SPoSE(n_dims=2, n_objects=4)
    estimator.embedding_ = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])

    metrics = evaluate_embedding(estimator, [[0, 1, 3], [3, 2, 1]])

    assert metrics["n_dims"] == 2
    assert metrics["accuracy"] == pytest.approx((1 + 1 / 3) / 2, abs=1e-15)
    assert metrics["n_ties"] == 1


def test_evaluate_real_embedding(things_dir, spose49):
    triplets = np.loadtxt(things_dir / "human_triplets.txt", dtype=np.int64)

    metrics = evaluate_embedding(spose49, triplets, things_dir=things_dir)

    assert round(metrics["accuracy"], 3) == 0.659
    assert metrics["things48_r"] == pytest.approx(0.8872, abs=5e-4)
    assert metrics["things48_objects"] == 48
    assert metrics["noise_ceiling_responses"] == 14
    assert metrics["nll"] < math.log(3)
    assert "48-object r 0.887" in format_metrics(metrics)


def test_evaluate_skips_things48_for_other_objects(things_dir):
    with pytest.warns(UserWarning, match="skipped the 48-object check: the embedding has 5 objects, not the 1854"):
        metrics = evaluate_embedding(np.eye(5), [[0, 1, 2]], things_dir=things_dir)

    assert "things48_r" not in metrics


def test_evaluate_skips_things48_for_constant_embedding(things_dir):
    """Equal rows give equal similarities: the 48-object r is undefined, but accuracy and NLL are not."""
    with pytest.warns(UserWarning, match="skipped the 48-object check: the embedding's similarities of the 48 "
                      "objects are all equal within rounding"):
        metrics = evaluate_embedding(np.ones((1854, 3)), [[0, 1, 2]], things_dir=things_dir)

    assert "things48_r" not in metrics
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["nll"] == pytest.approx(np.log(3))


@pytest.fixture(scope="module")
def shuffled_vice(things_dir):
    """The published VICE 42-d embedding with shuffled rows, its ids and the matching triplets."""
    from dimalign.io.objects import read_object_table

    vice = np.load(things_dir / "vice_embedding_42d.npy").astype(np.float64)
    ids = list(read_object_table(things_dir / "unique_id.txt").object_ids)
    order = np.random.default_rng(0).permutation(len(ids))
    new_row = np.empty_like(order)
    new_row[order] = np.arange(order.size)
    triplets = np.loadtxt(things_dir / "human_triplets.txt", dtype=np.int64)[:2000]
    return vice, vice[order], [ids[row] for row in order], new_row[triplets], triplets


def test_evaluate_maps_things48_by_object_id(things_dir, shuffled_vice):
    vice, shuffled, shuffled_ids, shuffled_triplets, triplets = shuffled_vice
    metrics = evaluate_embedding(shuffled, shuffled_triplets, things_dir=things_dir, object_ids=shuffled_ids)
    reference = evaluate_embedding(vice, triplets, things_dir=things_dir)

    assert metrics["things48_r"] == pytest.approx(0.8819, abs=5e-4)
    assert metrics["things48_r"] == pytest.approx(reference["things48_r"], abs=1e-12)
    assert metrics["accuracy"] == reference["accuracy"]


def test_cli_evaluate_reads_object_table(things_dir, shuffled_vice, tmp_path):
    from dimalign.io.objects import ObjectTable, write_object_table

    _, shuffled, shuffled_ids, shuffled_triplets, _ = shuffled_vice
    np.save(tmp_path / "shuffled.npy", shuffled)
    write_object_table(ObjectTable.from_ids(shuffled_ids), tmp_path / "objects_shuffled.tsv")
    np.savetxt(tmp_path / "triplets.txt", shuffled_triplets, fmt="%d")
    run_dir = tmp_path / "run"
    save_embedding(EmbeddingResult(shuffled), run_dir)
    write_object_table(ObjectTable.from_ids(shuffled_ids), run_dir / "objects.tsv")

    for embedding, extra in ((tmp_path / "shuffled.npy", ["--objects", str(tmp_path / "objects_shuffled.tsv")]), (run_dir, [])):
        out = tmp_path / f"out_{embedding.stem}"
        status = main(["evaluate", str(embedding), "--triplets", str(tmp_path / "triplets.txt"),
                       "--things-dir", str(things_dir), "-o", str(out), *extra])
        assert status == 0
        assert json.loads((out / "metrics.json").read_text())["things48_r"] == pytest.approx(0.8819, abs=5e-4)


def test_cli_evaluate_rejects_objects_differing_from_run(tmp_path, capsys):
    from dimalign.io.objects import ObjectTable, write_object_table

    run_dir, triplet_file = _cli_run(tmp_path)
    write_object_table(ObjectTable.from_ids([f"o{i}" for i in range(10)]), run_dir / "objects.tsv")
    write_object_table(ObjectTable.from_ids([f"o{i}" for i in range(10)][::-1]), tmp_path / "other.tsv")
    status = main(["evaluate", str(run_dir), "--triplets", str(triplet_file), "--objects", str(tmp_path / "other.tsv")])
    assert status == 1
    assert f"--objects {tmp_path / 'other.tsv'} differs from {run_dir / 'objects.tsv'}" in capsys.readouterr().err


def test_cli_evaluate_names_empty_triplet_file(tmp_path, capsys):
    run_dir, _ = _cli_run(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    status = main(["evaluate", str(run_dir), "--triplets", str(empty)])
    assert status == 1
    error = capsys.readouterr().err
    assert f"dimalign evaluate: error: {empty} contains no triplets" in error
    # The error alone reports the empty file, without a warning of the same text before it.
    assert error.count("contains no triplets") == 1


# -- the CLI ---------------------------------------------------------------------


def test_cli_evaluate_writes_metrics(tmp_path, capsys):
    rng = np.random.default_rng(0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_embedding(EmbeddingResult(rng.gamma(1.0, 1.0, size=(10, 3))), run_dir)
    triplets = np.array([rng.choice(10, size=3, replace=False) for _ in range(40)])
    triplet_file = tmp_path / "triplets.txt"
    np.savetxt(triplet_file, triplets, fmt="%d")
    out_dir = tmp_path / "out"

    status = main(["evaluate", str(run_dir), "--triplets", str(triplet_file), "-o", str(out_dir)])

    assert status == 0
    metrics = json.loads((out_dir / "metrics.json").read_text())
    manifest = json.loads((out_dir / "manifest.json").read_text())
    stored = np.load(run_dir / "embedding.npz")["embedding"]
    assert metrics["n_triplets"] == 40
    assert metrics["accuracy"] == pytest.approx(evaluate_embedding(stored, triplets)["accuracy"])
    assert manifest["step"] == "evaluate"
    assert manifest["outputs"]["accuracy"] == metrics["accuracy"]
    assert set(manifest["inputs"]) == {"embedding", "triplets"}
    assert "evaluated" in capsys.readouterr().err


def _cli_run(tmp_path):
    rng = np.random.default_rng(0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_embedding(EmbeddingResult(rng.gamma(1.0, 1.0, size=(10, 3))), run_dir)
    triplet_file = tmp_path / "triplets.txt"
    np.savetxt(triplet_file, [rng.choice(10, size=3, replace=False) for _ in range(40)], fmt="%d")
    return run_dir, triplet_file


def test_evaluate_keeps_user_metrics(tmp_path, capsys):
    run_dir, triplet_file = _cli_run(tmp_path)
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    (out_dir / "metrics.json").write_text("{}")
    argv = ["evaluate", str(run_dir), "--triplets", str(triplet_file), "-o", str(out_dir)]

    assert main(argv) == 1
    assert f"{out_dir / 'metrics.json'} exists, but {out_dir} contains no earlier dimalign evaluate" in capsys.readouterr().err
    assert (out_dir / "metrics.json").read_text() == "{}"
    assert not (out_dir / "manifest.json").exists()

    # A rerun into the folder of an earlier evaluate replaces its metrics.
    (out_dir / "metrics.json").unlink()
    assert main(argv) == 0
    assert main(argv) == 0



def test_cli_evaluate_rejects_folder_at_metrics_before_scoring(tmp_path, capsys):
    run_dir, triplet_file = _cli_run(tmp_path)
    out_dir = tmp_path / "evaluation"
    argv = ["evaluate", str(run_dir), "--triplets", str(triplet_file), "-o", str(out_dir)]
    assert main(argv) == 0
    capsys.readouterr()
    manifest = (out_dir / "manifest.json").read_text()
    (out_dir / "metrics.json").unlink()
    (out_dir / "metrics.json").mkdir()

    assert main(argv) == 1

    captured = capsys.readouterr()
    assert f"{out_dir / 'metrics.json'} is a folder, but dimalign evaluate writes a file of that name" in captured.err
    assert captured.out == ""
    assert (out_dir / "manifest.json").read_text() == manifest

def test_cli_evaluate_rejects_invalid_device(tmp_path, capsys):
    run_dir, triplet_file = _cli_run(tmp_path)
    out_dir = tmp_path / "out"

    status = main(["evaluate", str(run_dir), "--triplets", str(triplet_file), "--device", "banana",
                   "-o", str(out_dir)])

    assert status == 1
    assert "invalid device 'banana'" in capsys.readouterr().err
    assert not out_dir.exists()


def test_cli_evaluate_keeps_other_manifest(tmp_path, capsys):
    run_dir, triplet_file = _cli_run(tmp_path)
    (run_dir / "manifest.json").write_text(json.dumps({"step": "fit"}))

    status = main(["evaluate", str(run_dir), "--triplets", str(triplet_file), "-o", str(run_dir)])

    assert status == 1
    assert "already contains the output of dimalign fit" in capsys.readouterr().err
    assert json.loads((run_dir / "manifest.json").read_text()) == {"step": "fit"}
    assert not (run_dir / "metrics.json").exists()


def test_cli_evaluate_published_embedding(things_dir, tmp_path):
    out_dir = tmp_path / "out"

    status = main(
        [
            "evaluate",
            str(things_dir / "vice_embedding_42d.npy"),
            "--triplets",
            str(things_dir / "human_triplets.txt"),
            "--objects",
            str(things_dir / "unique_id.txt"),
            "--things-dir",
            str(things_dir),
            "-o",
            str(out_dir),
        ]
    )

    metrics = json.loads((out_dir / "metrics.json").read_text())
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert status == 0
    assert round(metrics["accuracy"], 3) == 0.645
    assert metrics["things48_r"] > 0.85
    assert "RDM48_triplet.mat" in manifest["inputs"]


def test_cli_evaluate_object_count_mismatch(tmp_path, capsys):
    embedding_file = tmp_path / "embedding.npy"
    np.save(embedding_file, np.ones((6, 2)))
    triplet_file = tmp_path / "triplets.txt"
    triplet_file.write_text("0 1 2\n")

    status = main(["evaluate", str(embedding_file), "--triplets", str(triplet_file), "--n-objects", "7"])

    assert status == 1
    assert "has 6 objects but the triplets are declared for 7" in capsys.readouterr().err


def test_cli_evaluate_index_out_of_range(tmp_path, capsys):
    embedding_file = tmp_path / "embedding.npy"
    np.save(embedding_file, np.ones((4, 2)))
    triplet_file = tmp_path / "triplets.txt"
    triplet_file.write_text("0 1 2\n0 3 4\n")

    status = main(["evaluate", str(embedding_file), "--triplets", str(triplet_file)])

    assert status == 1
    assert "4" in capsys.readouterr().err


def test_cli_evaluate_quiet_prints_metrics(tmp_path, capsys):
    """-q hides the log line, so the metrics must also reach standard output."""
    run_dir, triplet_file = _cli_run(tmp_path)

    status = main(["-q", "evaluate", str(run_dir), "--triplets", str(triplet_file)])

    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    stored = np.load(run_dir / "embedding.npz")["embedding"]
    triplets = np.loadtxt(triplet_file, dtype=np.int64)
    assert printed == evaluate_embedding(stored, triplets)


def test_cli_evaluate_rejects_split_folder(tmp_path, capsys):
    """A folder would load train.npy, and the 'held-out' accuracy would be the training accuracy."""
    run_dir, triplet_file = _cli_run(tmp_path)
    split = tmp_path / "split"
    split.mkdir()
    triplets = np.loadtxt(triplet_file, dtype=np.int64)
    np.save(split / "train.npy", triplets[:30])
    np.save(split / "val.npy", triplets[30:])

    status = main(["evaluate", str(run_dir), "--triplets", str(split)])

    assert status == 1
    assert f"pass the triplet file to score itself, such as {split / 'val.npy'}" in capsys.readouterr().err


def test_cli_evaluate_takes_folder_of_validation_file_alone(tmp_path, capsys):
    """A folder with val.npy but no training file is no split: the loader's own error applies."""
    run_dir, triplet_file = _cli_run(tmp_path)
    folder = tmp_path / "held_out"
    folder.mkdir()
    np.save(folder / "val.npy", np.loadtxt(triplet_file, dtype=np.int64))

    status = main(["evaluate", str(run_dir), "--triplets", str(folder)])

    error = capsys.readouterr().err
    assert status == 1
    assert f"no triplet file in {folder}" in error
    assert "training triplets" not in error


def test_cli_evaluate_writes_nan_metric_as_null(tmp_path, capsys):
    """Dot products of weights near 1e200 overflow, so the NLL is NaN, which JSON cannot hold."""
    embedding_file = tmp_path / "embedding.npy"
    np.save(embedding_file, np.full((4, 2), 1e200))
    triplet_file = tmp_path / "triplets.txt"
    triplet_file.write_text("0 1 2\n1 2 3\n")
    out_dir = tmp_path / "out"

    status = main(
        ["-q", "evaluate", str(embedding_file), "--triplets", str(triplet_file), "-o", str(out_dir)]
    )

    assert status == 0
    printed = capsys.readouterr().out
    assert "NaN" not in printed
    assert json.loads(printed)["nll"] is None
    assert json.loads(printed)["accuracy"] == pytest.approx(1 / 3)
    stored = (out_dir / "metrics.json").read_text()
    assert "NaN" not in stored
    assert json.loads(stored)["nll"] is None


def test_cli_evaluate_read_only_output_fails_before_scoring(tmp_path, capsys, monkeypatch, unwritable_folder):
    import dimalign.analysis.evaluate

    run_dir, triplet_file = _cli_run(tmp_path)
    locked = unwritable_folder

    def no_work(*args, **kwargs):
        raise AssertionError("scored the triplets before the output folder was checked")

    monkeypatch.setattr(dimalign.analysis.evaluate, "odd_one_out_accuracy", no_work)

    status = main(["evaluate", str(run_dir), "--triplets", str(triplet_file), "-o", str(locked / "eval")])

    assert status == 1
    captured = capsys.readouterr()
    assert f"cannot write into {locked}" in captured.err
    assert captured.out == ""
    assert list(locked.iterdir()) == []


def test_cli_evaluate_names_unfinished_fit(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"a checkpoint of a fit that was stopped")
    triplet_file = tmp_path / "triplets.txt"
    triplet_file.write_text("0 1 2\n")

    assert main(["evaluate", str(run_dir), "--triplets", str(triplet_file)]) == 1

    error = capsys.readouterr().err
    assert f"{run_dir} contains checkpoint.pt but no embedding.npz, so its fit has not finished" in error
    assert "dimalign fit ... --resume" in error


def test_evaluate_warns_when_dot_products_overflow():
    embedding = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]) * 1e160

    with pytest.warns(UserWarning, match=r"dot products of the embedding overflow float64 \(largest weight 1e\+160\)"):
        metrics = evaluate_embedding(embedding, [[0, 1, 2]])

    assert not math.isfinite(metrics["nll"])


def test_cli_evaluate_failed_write_prints_nothing(tmp_path, capsys, monkeypatch):
    """Standard output carries the metrics only when -o wrote them, so it agrees with the exit status."""
    import errno

    import dimalign.io.files

    run_dir, triplet_file = _cli_run(tmp_path)
    out_dir = tmp_path / "evaluation"
    argv = ["-q", "evaluate", str(run_dir), "--triplets", str(triplet_file), "-o", str(out_dir)]

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "manifest.json"))

    monkeypatch.setattr(dimalign.io.files, "write_manifest", disk_full)

    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "No space left on device" in captured.err
    assert not out_dir.exists()


def test_cli_evaluate_failed_rerun_keeps_earlier_metrics(tmp_path, capsys, monkeypatch):
    import errno

    import dimalign.io.files

    run_dir, triplet_file = _cli_run(tmp_path)
    out_dir = tmp_path / "evaluation"
    argv = ["-q", "evaluate", str(run_dir), "--triplets", str(triplet_file), "-o", str(out_dir)]
    assert main(argv) == 0
    earlier = {name: (out_dir / name).read_text() for name in ("metrics.json", "manifest.json")}
    capsys.readouterr()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "manifest.json"))

    monkeypatch.setattr(dimalign.io.files, "write_manifest", disk_full)

    assert main(argv) == 1
    assert capsys.readouterr().out == ""
    assert sorted(path.name for path in out_dir.iterdir()) == ["manifest.json", "metrics.json"]
    assert {name: (out_dir / name).read_text() for name in earlier} == earlier


@pytest.mark.parametrize("as_folder", [False, True])
def test_cli_evaluate_checks_triplet_table(tmp_path, capsys, as_folder):
    run_dir, triplet_file = _cli_run(tmp_path)
    table = tmp_path / "objects.tsv"
    table.write_text("".join(f"p{index}\n" for index in range(8)))
    triplets = tmp_path if as_folder else triplet_file

    status = main(["evaluate", str(run_dir), "--triplets", str(triplets)])

    assert status == 1
    assert (f"{table}, the object table of the triplets {triplets}, lists 8 objects, but the "
            f"embedding {run_dir / 'embedding.npz'} has 10 rows") in capsys.readouterr().err


def test_cli_evaluate_warns_other_triplet_ids(tmp_path, capsys):
    from dimalign.io.objects import ObjectTable, write_object_table

    run_dir, triplet_file = _cli_run(tmp_path)
    write_object_table(ObjectTable.from_ids([f"o{i}" for i in range(10)]), run_dir / "objects.tsv")
    (tmp_path / "objects.tsv").write_text("".join(f"p{index}\n" for index in range(10)))

    status = main(["evaluate", str(run_dir), "--triplets", str(triplet_file)])

    assert status == 0
    error = capsys.readouterr().err
    assert (f"{tmp_path / 'objects.tsv'}, the object table of the triplets {triplet_file}, names row 0 "
            f"'p0', but {run_dir / 'objects.tsv'} names the embedding's row 0 'o0'") in error


def test_cli_evaluate_unreadable_triplet_table(tmp_path, capsys):
    run_dir, triplet_file = _cli_run(tmp_path)
    (tmp_path / "objects.tsv").write_text("a\n\nb\n")

    status = main(["evaluate", str(run_dir), "--triplets", str(triplet_file)])

    assert status == 1
    assert (f"dimalign evaluate reads {tmp_path / 'objects.tsv'} because it lies next to the "
            "triplets: fix it, or move it away if it does not belong to them") in capsys.readouterr().err


def _simulated_triplet_file(path: Path, n_objects: int = 30, n_triplets: int = 400) -> None:
    from dimalign.triplets import sample_triplets, simulate_choices

    embedding = np.random.default_rng(3).gamma(0.5, 1.0, size=(n_objects, 3))
    triplets = sample_triplets(n_objects=n_objects, n_triplets=n_triplets, random_state=0)
    result = simulate_choices(embedding, triplets, random_state=0)
    np.savetxt(path, result.triplets, fmt="%d")


FIT_ARGS = ["--n-objects", "30", "--max-epochs", "2", "--n-dims", "4", "--min-objects", "1"]


def _held_out_warnings(error_output: str) -> list[str]:
    return [line.split("WARNING dimalign: ", 1)[1] for line in error_output.splitlines() if "not held out" in line]


def test_cli_evaluate_warns_about_fitted_file(tmp_path, capsys):
    triplet_file = tmp_path / "judgements.txt"
    _simulated_triplet_file(triplet_file)
    assert main(["-q", "fit", str(triplet_file), "-o", str(tmp_path / "run"), *FIT_ARGS]) == 0
    capsys.readouterr()

    assert main(["evaluate", str(tmp_path / "run"), "--triplets", str(triplet_file)]) == 0

    assert _held_out_warnings(capsys.readouterr().err) == [
        f"--triplets {triplet_file} is the file that {tmp_path / 'run'} was fitted to, and the fit "
        "held out only 10% of its triplets and trained on the rest, so the accuracy is not held out. "
        f"To score the held-out triplets, write them with 'dimalign import-triplets {triplet_file} --n-objects 30 "
        "--split 0.1 --seed 0 -o FOLDER' and pass FOLDER/val.npy"
    ]


def test_cli_evaluate_held_out_split_matches_fit(tmp_path, capsys):
    """The import-triplets command that the warning suggests writes the fit's own validation triplets."""
    from dimalign.io.triplets import load_triplets, split_triplets

    triplet_file = tmp_path / "judgements.txt"
    _simulated_triplet_file(triplet_file)
    assert main(["-q", "fit", str(triplet_file), "-o", str(tmp_path / "run"), *FIT_ARGS]) == 0
    assert main(["-q", "import-triplets", str(triplet_file), "--n-objects", "30", "--split", "0.1",
                 "--seed", "0", "-o", str(tmp_path / "split")]) == 0

    _, fit_val = split_triplets(load_triplets(triplet_file, 30), val_fraction=0.1, random_state=0)
    np.testing.assert_array_equal(np.load(tmp_path / "split" / "val.npy"), fit_val)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["outputs"]["n_val"] == len(fit_val)

    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--triplets", str(tmp_path / "split" / "val.npy")]) == 0
    assert _held_out_warnings(capsys.readouterr().err) == []


def _fit_simulated_run(folder):
    """Simulate 400 triplets of 30 named objects in ``folder`` and fit ``folder/run`` to them."""
    features = np.random.default_rng(3).gamma(0.5, 1.0, size=(30, 3))
    np.save(folder / "features.npy", features)
    (folder / "names.txt").write_text("".join(f"object_{index}\n" for index in range(30)))
    assert main(["-q", "simulate", str(folder / "features.npy"), "--objects", str(folder / "names.txt"),
                 "--n-triplets", "400",
                 "-o", str(folder / "simulated")]) == 0
    assert main(["-q", "fit", str(folder / "simulated"), "-o", str(folder / "run"), *FIT_ARGS[2:]]) == 0
    return folder / "simulated" / "triplets.npy"


def test_suggested_split_command_runs(tmp_path, capsys):
    """The warning's import-triplets command runs as written for a fit of a simulate folder."""
    import shlex

    from dimalign.io.triplets import load_triplets, split_triplets

    triplet_file = _fit_simulated_run(tmp_path)
    capsys.readouterr()

    assert main(["evaluate", str(tmp_path / "run"), "--triplets", str(triplet_file)]) == 0

    warnings_seen = _held_out_warnings(capsys.readouterr().err)
    assert len(warnings_seen) == 1
    assert (f"'dimalign import-triplets {triplet_file} --objects {tmp_path / 'simulated' / 'objects.tsv'} "
            "--split 0.1 --seed 0 -o FOLDER'") in warnings_seen[0]
    command = warnings_seen[0].split("'")[1].replace("FOLDER", str(tmp_path / "split"))
    assert main(["-q", *shlex.split(command)[1:]]) == 0
    _, fit_val = split_triplets(load_triplets(triplet_file, 30), val_fraction=0.1, random_state=0)
    np.testing.assert_array_equal(np.load(tmp_path / "split" / "val.npy"), fit_val)


def test_suggested_split_command_quotes_paths(tmp_path, capsys):
    """A path with a space is quoted, so that the command still runs as written in a shell."""
    import shlex

    from dimalign.io.triplets import load_triplets, split_triplets

    folder = tmp_path / "my study"
    folder.mkdir()
    triplet_file = _fit_simulated_run(folder)
    capsys.readouterr()

    assert main(["evaluate", str(folder / "run"), "--triplets", str(triplet_file)]) == 0

    warnings_seen = _held_out_warnings(capsys.readouterr().err)
    assert len(warnings_seen) == 1
    command = warnings_seen[0].split("write them with '", 1)[1].rsplit("' and pass", 1)[0]
    assert shlex.split(command) == [
        "dimalign", "import-triplets", str(triplet_file), "--objects", str(folder / "simulated" / "objects.tsv"),
        "--split", "0.1", "--seed", "0", "-o", "FOLDER",
    ]
    arguments = [str(tmp_path / "split") if part == "FOLDER" else part for part in shlex.split(command)]
    assert main(["-q", *arguments[1:]]) == 0
    _, fit_val = split_triplets(load_triplets(triplet_file, 30), val_fraction=0.1, random_state=0)
    np.testing.assert_array_equal(np.load(tmp_path / "split" / "val.npy"), fit_val)


def test_cli_evaluate_warns_about_training_file(tmp_path, capsys):
    triplet_file = tmp_path / "judgements.txt"
    _simulated_triplet_file(triplet_file)
    assert main(["-q", "import-triplets", str(triplet_file), "--n-objects", "30", "--split", "0.1",
                 "-o", str(tmp_path / "split")]) == 0
    assert main(["-q", "fit", str(tmp_path / "split"), "-o", str(tmp_path / "run"), *FIT_ARGS[2:]]) == 0
    capsys.readouterr()

    assert main(["evaluate", str(tmp_path / "run"), "--triplets", str(tmp_path / "split" / "train.npy")]) == 0

    assert _held_out_warnings(capsys.readouterr().err) == [
        f"--triplets {tmp_path / 'split' / 'train.npy'} contains the training triplets of {tmp_path / 'run'}, "
        f"so the accuracy is not held out: pass the held-out triplets, {tmp_path / 'split' / 'val.npy'}"
    ]


def test_cli_evaluate_two_row_embedding_named(tmp_path, capsys):
    embedding_file = tmp_path / "embedding.npy"
    np.save(embedding_file, np.ones((2, 3)))
    triplet_file = tmp_path / "triplets.txt"
    triplet_file.write_text("0 1 2\n")

    status = main(["evaluate", str(embedding_file), "--triplets", str(triplet_file), "-o", str(tmp_path / "out")])

    assert status == 1
    assert capsys.readouterr().err.endswith(
        f"dimalign evaluate: error: the embedding {embedding_file} has 2 rows (objects), but a triplet "
        "needs 3 distinct objects: pass an embedding with one row per object\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("inputs", "settings", "warned"), [
    (5, {}, False),
    ("TRIPLETS", [], True),
    ("TRIPLETS", {"validation_split": {"val_fraction": None, "split_seed": 0}}, True),
    ("TRIPLETS", {"validation_split": {"val_fraction": "0.1", "split_seed": 0}}, True),
])
def test_cli_evaluate_odd_fit_manifest(tmp_path, capsys, inputs, settings, warned):
    """A damaged manifest of a run only loses the warning about training triplets."""
    from dimalign.io.files import sha256_file

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_embedding(EmbeddingResult(embedding=np.random.default_rng(0).random((6, 2))), run_dir)
    triplet_file = tmp_path / "triplets.txt"
    triplet_file.write_text("0 1 2\n3 4 5\n")
    if inputs == "TRIPLETS":
        inputs = {"triplets": {"path": str(triplet_file), "sha256": sha256_file(triplet_file)}}
    manifest = {"step": "fit", "inputs": inputs, "settings": settings}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))

    status = main(["evaluate", str(run_dir), "--triplets", str(triplet_file)])

    captured = capsys.readouterr()
    assert status == 0
    assert json.loads(captured.out)["n_triplets"] == 2
    expected = [
        f"--triplets {triplet_file} contains the training triplets of {run_dir}, so the accuracy is "
        "not held out: pass triplets that the fit did not train on"
    ]
    assert _held_out_warnings(captured.err) == (expected if warned else [])


@pytest.mark.parametrize(("triplets", "shown"), [
    (np.array([[0, 1, 2**63]], dtype=np.uint64), "9223372036854775808"),
    (np.array([[0, 1, 1e20]]), "100000000000000000000"),
])
def test_evaluate_names_huge_index_exactly(triplets, shown):
    embedding = np.random.default_rng(0).random((10, 3))

    with pytest.raises(ValueError) as error:
        evaluate_embedding(embedding, triplets)

    assert str(error.value) == (
        f"triplet row 0 has object index {shown}, but the embedding has 10 objects (valid indices "
        "0..9). 1 rows are affected. Check that the triplets are 0-based and belong to this embedding."
    )


@pytest.mark.parametrize("dtype", ["complex128", "<U32"])
def test_evaluate_rejects_non_real_embedding(recwarn, dtype):
    """A cast to float would drop imaginary parts (with only a warning) or parse text."""
    embedding = np.random.default_rng(0).random((10, 3)).astype(dtype)

    with pytest.raises(ValueError) as error:
        evaluate_embedding(embedding, np.array([[0, 1, 2], [3, 4, 5]]))

    assert str(error.value) == (
        f"the embedding must contain real numbers, got dtype {dtype}; pass a float array"
    )
    assert not [warning for warning in recwarn if "imaginary" in str(warning.message)]
