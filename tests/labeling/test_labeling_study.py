"""Study setup and data access: grids, image paths, participants, answers and export."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dimalign.interpret.grids import percentile_grid
from dimalign.io.files import sha256_file
from dimalign.io.objects import ObjectTable, read_object_table, write_object_table
from dimalign.io.runs import EmbeddingResult, load_embedding, save_embedding
from dimalign.labeling.answers import Answer, AnswerError, validate_answer
from dimalign.labeling.study import (
    DEFAULT_QUESTIONS,
    NotFoundError,
    Study,
    create_study,
    new_participant_code,
    open_or_create_run_study,
    parse_dimensions,
    resolve_image,
)


def test_study_stores_percentile_grids(study_path, labeling_run):
    embedding = load_embedding(labeling_run).embedding
    with Study(study_path) as study:
        assert study.dimensions == (0, 1, 2, 3, 4)
        for dimension in study.dimensions:
            expected = percentile_grid(embedding[:, dimension])
            np.testing.assert_array_equal(study.grid(dimension), expected)
            assert study.grid(dimension).shape == (5, 6)
        top = study.top_objects(0)
        assert top.tolist() == np.argsort(-embedding[:, 0], kind="stable")[:20].tolist()


def test_grid_shows_expected_objects(study_path, labeling_run):
    table = read_object_table(labeling_run / "objects.tsv")
    with Study(study_path) as study:
        animals = [table.object_ids[index] for index in study.grid(0)[0]]
        inverted = [table.object_ids[index] for index in study.grid(1)[0]]
    assert all(name.split("_", 1)[1] in {"bird", "cat", "dragonfly", "owl", "parrot", "chelsea"} for name in animals)
    assert all(name.startswith("inverted_") for name in inverted)


def test_image_files_resolved_inside_folder(study_path, image_set):
    folder, names = image_set
    with Study(study_path) as study:
        for index in study.grid(2).ravel():
            path = study.image_file(int(index))
            assert path == (folder / names[int(index)]).resolve()
        with pytest.raises(NotFoundError):
            study.image_file(10_000)


def test_objects_option_used_without_table(tmp_path, labeling_run, image_set):
    run = tmp_path / "bare_run"
    run.mkdir()
    (run / "embedding.npz").write_bytes((labeling_run / "embedding.npz").read_bytes())
    with pytest.raises(FileNotFoundError, match="--objects"):
        create_study(tmp_path / "a.db", run, image_set[0])
    assert not (tmp_path / "a.db").exists()
    path = create_study(tmp_path / "b.db", run, image_set[0], objects=labeling_run / "objects.tsv", dims="0")
    with Study(path) as study:
        assert study.dimensions == (0,)


def test_object_table_length_mismatch_rejected(tmp_path, labeling_run, image_set):
    table = read_object_table(labeling_run / "objects.tsv")
    short = ObjectTable(table.object_ids[:-1], table.sources[:-1])
    write_object_table(short, tmp_path / "short.tsv")
    with pytest.raises(ValueError, match="35 objects but the embedding .* has 36 rows"):
        create_study(tmp_path / "s.db", labeling_run, image_set[0], objects=tmp_path / "short.tsv")
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("source", ["../outside.png", "/etc/passwd", "plain/../../outside.png"])
def test_source_outside_image_folder_rejected(tmp_path, labeling_run, image_set, source):
    (image_set[0].parent / "outside.png").write_bytes(b"\x89PNG")
    table = read_object_table(labeling_run / "objects.tsv")
    sources = (source,) + table.sources[1:]
    write_object_table(ObjectTable(table.object_ids, sources), tmp_path / "objects.tsv")
    # Object 0 (a bird photo) is in the grid of dimension 0.
    with pytest.raises(ValueError, match="leaves the image folder"):
        create_study(tmp_path / "s.db", labeling_run, image_set[0], objects=tmp_path / "objects.tsv", dims="0")
    assert not (tmp_path / "s.db").exists()


def test_absolute_source_inside_folder_accepted(tmp_path, labeling_run, image_set):
    # dimalign extract writes absolute sources into objects.tsv, which simulate and fit copy into the run.
    folder, names = image_set
    table = read_object_table(labeling_run / "objects.tsv")
    sources = tuple(str((folder / name).resolve()) for name in names)
    write_object_table(ObjectTable(table.object_ids, sources), tmp_path / "objects.tsv")
    path = create_study(tmp_path / "s.db", labeling_run, folder, objects=tmp_path / "objects.tsv", dims="0")
    with Study(path) as study:
        for index in study.grid(0).ravel():
            assert study.image_file(int(index)) == (folder / names[int(index)]).resolve()
    assert resolve_image(folder, "plain_bird", str((folder / "plain/bird.png").resolve())) == "plain/bird.png"


def test_symlink_out_of_image_folder_rejected(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "secret.png").write_bytes(b"\x89PNG")
    os.symlink(tmp_path / "secret.png", images / "link.png")
    with pytest.raises(ValueError, match="outside the image folder"):
        resolve_image(images, "link", "link.png")


def test_image_found_by_object_id(tmp_path):
    images = tmp_path / "images"
    (images / "aardvark").mkdir(parents=True)
    (images / "aardvark" / "aardvark_02s.jpg").write_bytes(b"x")
    (images / "aardvark" / "aardvark_01b.jpg").write_bytes(b"x")
    (images / "abacus.png").write_bytes(b"x")
    assert resolve_image(images, "aardvark", "") == "aardvark/aardvark_01b.jpg"
    assert resolve_image(images, "abacus", "") == "abacus.png"
    with pytest.raises(FileNotFoundError, match="accordion"):
        resolve_image(images, "accordion", "")
    (images / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not an image"):
        resolve_image(images, "notes", "notes.txt")


def test_object_id_too_long_for_file_name(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    object_id = "a" * 300
    with pytest.raises(FileNotFoundError) as raised:
        resolve_image(images, object_id, "")
    message = str(raised.value)
    assert "is too long for a file name" in message
    assert "source column" in message
    assert len(message) < 400


def test_existing_database_not_overwritten(study_path, labeling_run, image_set):
    before = study_path.read_bytes()
    with pytest.raises(FileExistsError):
        create_study(study_path, labeling_run, image_set[0])
    assert study_path.read_bytes() == before


def test_parse_dimensions():
    assert parse_dimensions("all", 4) == [0, 1, 2, 3]
    assert parse_dimensions("2, 0", 4) == [0, 2]
    assert parse_dimensions("1-3", 4) == [1, 2, 3]
    with pytest.raises(ValueError, match=r"dimension '4' in --dims '4' does not exist: the embedding has dimensions 0\.\.3"):
        parse_dimensions("4", 4)
    with pytest.raises(ValueError, match="invalid dimension 'x'"):
        parse_dimensions("x", 4)
    with pytest.raises(ValueError, match="twice"):
        parse_dimensions("1,1", 4)
    with pytest.raises(ValueError, match="--dims 'all' selects no dimension"):
        parse_dimensions("all", 0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0-5000", "dimension '0-5000' in --dims '0-5000' does not exist: the embedding has dimensions 0..3"),
        ("1, 5-2", "dimension '5-2' in --dims '1, 5-2' does not exist: the embedding has dimensions 0..3"),
        ("3-1", "invalid range '3-1' in --dims '3-1': write the smaller dimension first, such as 1-3"),
    ],
)
def test_dimension_range_bounds_checked(spec, message):
    # A range is checked before it is expanded, so the error names the range, not each number in it.
    with pytest.raises(ValueError) as raised:
        parse_dimensions(spec, 4)
    assert str(raised.value) == message


def test_validate_answer_trims_and_keeps_text():
    answer = validate_answer(DEFAULT_QUESTIONS, ["  Red fruit ", "", "<i>x</i>"], "visual", "several")
    assert answer == Answer(labels=("Red fruit", "<i>x</i>"), kind="visual", interpretability="several")


def test_validate_answer_removes_format_characters():
    labels = ["\ufeffRed\u200b", "so\u00adft", "word\u2060 joiner"]
    answer = validate_answer(DEFAULT_QUESTIONS, labels, "visual", "one")
    assert answer.labels == ("Red", "soft", "word joiner")


def test_validate_answer_composes_after_format_removal():
    # A format character between a letter and its combining accent blocks
    # composition, so the label is composed again once the character is gone.
    answer = validate_answer(DEFAULT_QUESTIONS, ["cafe\u200b\u0301"], "visual", "one")
    assert answer.labels == ("caf\u00e9",)


def test_validate_answer_keeps_joiners_inside_words():
    # The zero-width non-joiner shapes Persian and Indic words, and the joiner
    # builds emoji sequences: both stay between two visible characters and go
    # elsewhere, where they only make look-alike labels differ.
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    answer = validate_answer(DEFAULT_QUESTIONS, [persian, family, "\u200dred\u200c", "red \u200c"], "visual", "one")
    assert answer.labels == (persian, family, "red", "red")


def test_validate_answer_keeps_rejecting_invisible_labels():
    # Bidirectional controls are format characters too, but they are
    # rejected rather than removed, and a label of nothing but format
    # characters stays invalid.
    for label in ("\u200b", "\ufeff\u00ad", "red\u202eder"):
        with pytest.raises(AnswerError) as raised:
            validate_answer(DEFAULT_QUESTIONS, [label], "visual", "one")
        assert set(raised.value.errors) == {"labels"}


def test_validate_answer_names_every_field():
    with pytest.raises(AnswerError) as raised:
        validate_answer(DEFAULT_QUESTIONS, [], "bad", None)
    assert set(raised.value.errors) == {"labels", "kind", "interpretability"}
    with pytest.raises(AnswerError, match="control characters"):
        validate_answer(DEFAULT_QUESTIONS, ["a\nb"], "visual", "one")


def test_participant_order_reproducible_from_seed(study_path):
    with Study(study_path) as study:
        first, code_one = study.add_participant(order_seed=42)
        second, code_two = study.add_participant(order_seed=42)
        expected = np.random.default_rng(42).permutation([0, 1, 2, 3, 4]).tolist()
        assert list(first.order) == expected
        assert second.order == first.order
        assert code_one != code_two
        assert study.participant(first.participant_id).order_seed == 42
        assert study.participant_by_code(code_two).participant_id == second.participant_id
        with pytest.raises(NotFoundError):
            study.participant_by_code("not-a-code")


def test_participant_added_once_per_code(study_path):
    code = new_participant_code()
    with Study(study_path) as study:
        first, first_created = study.add_participant_once(code, order_seed=1)
        second, second_created = study.add_participant_once(code, order_seed=2)
        assert first_created
        assert not second_created
        assert second == first
        assert len(study.participants()) == 1
        assert study.participant_by_code(code) == first


def test_setup_stores_image_checksums(study_path, image_set):
    with Study(study_path) as study:
        rows = study.connection.execute(
            "SELECT image_path, image_sha256 FROM objects WHERE image_path IS NOT NULL"
        ).fetchall()
        without_image = study.connection.execute(
            "SELECT COUNT(*) FROM objects WHERE image_path IS NULL AND image_sha256 IS NOT NULL"
        ).fetchone()[0]
    assert rows
    for row in rows:
        assert row["image_sha256"] == sha256_file(image_set[0] / row["image_path"])
    assert without_image == 0


def test_code_stored_only_as_hash(study_path):
    with Study(study_path) as study:
        _, code = study.add_participant()
    assert code.encode() not in study_path.read_bytes()
    for suffix in ("-wal", "-shm"):
        sidecar = study_path.with_name(study_path.name + suffix)
        if sidecar.exists():
            assert code.encode() not in sidecar.read_bytes()


def test_save_answer_for_unknown_ids_writes_nothing(study_path):
    answer = Answer(labels=("a",), kind="visual", interpretability="one")
    with Study(study_path) as study:
        participant, _ = study.add_participant()
        with pytest.raises(NotFoundError):
            study.save_answer(999, 0, answer)
        with pytest.raises(NotFoundError):
            study.save_answer(participant.participant_id, 9, answer)
        assert study.answers() == []


def test_next_dimension_follows_order(study_path):
    answer = Answer(labels=("a",), kind="visual", interpretability="one")
    with Study(study_path) as study:
        participant, _ = study.add_participant(order_seed=3)
        assert study.next_dimension(participant) == participant.order[0]
        study.save_answer(participant.participant_id, participant.order[1], answer)
        assert study.next_dimension(participant) == participant.order[0]
        for dimension in participant.order:
            study.save_answer(participant.participant_id, dimension, answer)
        assert study.next_dimension(participant) is None


def test_export_answers_csv(study_path, tmp_path):
    with Study(study_path) as study:
        participant, code = study.add_participant(order_seed=1)
        dimension = participant.order[2]
        study.save_answer(participant.participant_id, dimension,
                          Answer(labels=("a, b", 'say "hi"'), kind="semantic", interpretability="none"))
        assert study.export_answers(tmp_path / "answers.csv") == 1
    with open(tmp_path / "answers.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    assert rows[0]["dimension"] == str(dimension)
    assert rows[0]["position"] == "3"
    assert [rows[0][f"label_{number}"] for number in range(1, 6)] == ["a, b", 'say "hi"', "", "", ""]
    assert rows[0]["kind"] == "semantic"
    assert code not in (tmp_path / "answers.csv").read_text()


def test_run_study_created_then_reused(tmp_path, labeling_run, image_set):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("embedding.npz", "objects.tsv"):
        (run / name).write_bytes((labeling_run / name).read_bytes())
    path = open_or_create_run_study(run, image_set[0], dims="0,1")
    assert path == run / "labels.db"
    with Study(path) as study:
        study.add_participant()
    assert open_or_create_run_study(run, image_set[0]) == path
    with Study(path) as study:
        assert len(study.participants()) == 1
        assert json.loads(study.settings["dimensions"]) == [0, 1]
    other_images = tmp_path / "other"
    other_images.mkdir()
    with pytest.raises(ValueError, match="does not match"):
        open_or_create_run_study(run, other_images)


def copy_run(tmp_path, labeling_run):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("embedding.npz", "objects.tsv"):
        (run / name).write_bytes((labeling_run / name).read_bytes())
    return run


def test_run_study_rejects_other_dims(tmp_path, labeling_run, image_set):
    run = copy_run(tmp_path, labeling_run)
    open_or_create_run_study(run, image_set[0], dims="0,1")
    message = "the study has dimensions 0-1, the request 3-5"
    with pytest.raises(ValueError, match=message):
        open_or_create_run_study(run, image_set[0], dims="3-5")
    assert open_or_create_run_study(run, image_set[0], dims="0-1") == run / "labels.db"


def test_run_study_rejects_other_objects(tmp_path, labeling_run, image_set):
    run = copy_run(tmp_path, labeling_run)
    open_or_create_run_study(run, image_set[0], dims="0")
    other = tmp_path / "other.tsv"
    other.write_bytes((run / "objects.tsv").read_bytes())
    message = f"the study uses the object table {(run / 'objects.tsv').resolve()}, the request {other.resolve()}"
    with pytest.raises(ValueError, match=message):
        open_or_create_run_study(run, image_set[0], objects=other)


def test_run_study_needs_embedding(tmp_path, labeling_run, image_set):
    run = copy_run(tmp_path, labeling_run)
    open_or_create_run_study(run, image_set[0], dims="0")
    (run / "embedding.npz").unlink()
    with pytest.raises(FileNotFoundError, match=f"was made from {run / 'embedding.npz'}, which is missing"):
        open_or_create_run_study(run, image_set[0])


def test_study_records_embedding_dimensions(study_path):
    with Study(study_path) as study:
        assert study.settings["n_embedding_dims"] == "12"


def test_setup_over_folder_or_other_database(tmp_path, labeling_run, image_set):
    folder = tmp_path / "dir.db"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        create_study(folder, labeling_run, image_set[0])
    assert str(raised.value) == f"study database {folder} is a folder: give a file name, such as {folder / 'study.db'}"
    other = tmp_path / "other.sqlite"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE users (name TEXT)")
    connection.commit()
    connection.close()
    before = other.read_bytes()
    with pytest.raises(FileExistsError) as raised:
        create_study(other, labeling_run, image_set[0])
    assert str(raised.value) == (
        f"{other} exists and is not a study database (its tables are ['users'], but a study has "
        "['schema_version', 'study']): choose another file name, because setup never overwrites a file"
    )
    assert other.read_bytes() == before


def _leave_write_ahead_log(study: Path) -> None:
    """Save an answer in a process that exits without closing the study, as a killed server does."""
    script = (
        "import os, sys\n"
        "from dimalign.labeling.answers import validate_answer\n"
        "from dimalign.labeling.study import Study\n"
        "study = Study(sys.argv[1])\n"
        "participant, _ = study.add_participant(order_seed=1)\n"
        "answer = validate_answer(study.questions, ['OLD ANSWER'], 'visual', 'one')\n"
        "study.save_answer(participant.participant_id, 0, answer)\n"
        "os._exit(0)\n"
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", script, str(study)], check=True, env=environment)


def test_setup_rejects_leftover_sqlite_files(tmp_path, labeling_run, image_set):
    old = create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="0-1")
    _leave_write_ahead_log(old)
    old.unlink()
    leftovers = [tmp_path / name for name in ("study.db-wal", "study.db-shm")]
    assert all(path.exists() for path in leftovers)
    before = {path: path.read_bytes() for path in leftovers}

    with pytest.raises(FileExistsError) as raised:
        create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="3-4")
    message = str(raised.value)
    for path in leftovers:
        assert str(path) in message
    assert "choose another file name" in message
    assert not (tmp_path / "study.db").exists()
    assert {path: path.read_bytes() for path in leftovers} == before


def test_setup_removes_unused_lone_shm(tmp_path, labeling_run, image_set, caplog):
    old = create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="0-1")
    _leave_write_ahead_log(old)
    old.unlink()
    (tmp_path / "study.db-wal").unlink()
    shared_memory = tmp_path / "study.db-shm"
    assert shared_memory.stat().st_size > 0

    with caplog.at_level(logging.WARNING, logger="dimalign.labeling.db"):
        created = create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="3-4")

    assert f"removed {shared_memory}" in caplog.text
    assert not shared_memory.exists()
    with Study(created) as study:
        assert study.dimensions == (3, 4)
        assert study.participants() == []


def _hold_database_open(study: Path) -> subprocess.Popen:
    """Open a study in another process, which keeps it open until its standard input closes."""
    script = (
        "import sqlite3, sys\n"
        "connection = sqlite3.connect(sys.argv[1])\n"
        "connection.execute('PRAGMA journal_mode = WAL')\n"
        "connection.execute('SELECT COUNT(*) FROM study').fetchone()\n"
        "print('open', flush=True)\n"
        "sys.stdin.read()\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(study)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "open"
    return process


def test_setup_keeps_lone_shm_in_use(tmp_path, labeling_run, image_set):
    old = create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="0-1")
    holder = _hold_database_open(old)
    try:
        # As when a study is deleted while a server still has it open.
        old.unlink()
        (tmp_path / "study.db-wal").unlink()
        shared_memory = tmp_path / "study.db-shm"
        before = shared_memory.read_bytes()

        with pytest.raises(FileExistsError) as raised:
            create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="3-4")

        message = str(raised.value)
        assert f"{shared_memory} is in use by another process" in message
        assert "stop that process" in message
        assert shared_memory.read_bytes() == before
        assert not (tmp_path / "study.db").exists()
    finally:
        holder.communicate(timeout=30)


def test_setup_keeps_lone_shm_link(tmp_path, labeling_run, image_set):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"\0" * 32)
    (tmp_path / "study.db-shm").symlink_to(target)

    with pytest.raises(FileExistsError, match="study.db-shm is the shared-memory index of an earlier") as raised:
        create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="0-1")

    assert "replay" not in str(raised.value)
    assert (tmp_path / "study.db-shm").is_symlink()
    assert target.read_bytes() == b"\0" * 32
    assert not (tmp_path / "study.db").exists()


def test_run_study_rejects_leftover_journal(tmp_path, labeling_run, image_set):
    run = copy_run(tmp_path, labeling_run)
    journal = run / "labels.db-journal"
    journal.write_bytes(b"rollback journal of an earlier study")
    with pytest.raises(FileExistsError, match=re.escape(str(journal))):
        open_or_create_run_study(run, image_set[0], dims="0")
    assert not (run / "labels.db").exists()
    assert journal.read_bytes() == b"rollback journal of an earlier study"


def test_setup_rejects_embedding_without_dimensions(tmp_path, labeling_run, image_set):
    run = tmp_path / "run"
    save_embedding(EmbeddingResult(embedding=np.zeros((36, 0))), run)
    (run / "objects.tsv").write_bytes((labeling_run / "objects.tsv").read_bytes())
    with pytest.raises(ValueError) as raised:
        create_study(tmp_path / "study.db", run, image_set[0])
    assert str(raised.value) == (
        f"the embedding {run} has 0 dimensions (shape (36, 0)): a study needs an embedding with at "
        "least one dimension"
    )
    assert not (tmp_path / "study.db").exists()


def test_setup_keeps_study_created_meanwhile(tmp_path, labeling_run, image_set, monkeypatch):
    # Another setup of the same file, such as a second `label-app RUN`,
    # finishes while this one computes the grids. Its study may already have
    # participants, so this setup must fail instead of replacing it.
    from dimalign.labeling import study as study_module

    target = tmp_path / "study.db"
    real_load = study_module.load_embedding

    def load_while_other_setup_finishes(run):
        monkeypatch.setattr(study_module, "load_embedding", real_load)
        create_study(target, labeling_run, image_set[0], dims="0")
        return real_load(run)

    monkeypatch.setattr(study_module, "load_embedding", load_while_other_setup_finishes)
    with pytest.raises(FileExistsError, match=re.escape(f"study database {target} exists")):
        create_study(target, labeling_run, image_set[0], dims="1-2")
    with Study(target) as study:
        assert study.dimensions == (0,)
    assert [path.name for path in tmp_path.iterdir()] == ["study.db"]


def test_run_study_moved_images_point_to_serve(tmp_path, labeling_run, image_set):
    # The short form requires --images, so "drop the differing options" cannot
    # apply to it. After a move the message must point to serve --images.
    run = copy_run(tmp_path, labeling_run)
    open_or_create_run_study(run, image_set[0], dims="0")
    moved = tmp_path / "moved-images"
    moved.mkdir()
    with pytest.raises(ValueError) as raised:
        open_or_create_run_study(run, moved)
    assert (
        f"If the images were moved to {moved.resolve()}, serve the study from there with "
        f"`dimalign label-app serve {run / 'labels.db'} --images {moved}`"
    ) in str(raised.value)


def test_setup_over_dangling_link_named(tmp_path, labeling_run, image_set):
    link = tmp_path / "study.db"
    link.symlink_to(tmp_path / "missing" / "study.db")
    with pytest.raises(FileExistsError) as raised:
        create_study(link, labeling_run, image_set[0], dims="0")
    assert str(raised.value) == (
        f"{link} is a symbolic link to {tmp_path / 'missing' / 'study.db'}, which does not exist: remove the "
        "link, or choose another file name"
    )
    assert link.is_symlink()
    assert [path.name for path in tmp_path.iterdir()] == ["study.db"]


def _edit_answer(study_path: Path, labels_sql: str) -> None:
    """Store one answer, then replace its labels_json by an SQL expression, as an edit by hand would."""
    with Study(study_path) as study:
        participant, _ = study.add_participant(order_seed=1)
        study.save_answer(participant.participant_id, 2, Answer(labels=("red",), kind="visual",
                                                                interpretability="one"))
    with sqlite3.connect(study_path) as connection:
        connection.execute(f"UPDATE answers SET labels_json = {labels_sql}")


@pytest.mark.parametrize(("labels_sql", "problem"), [
    ("'not json'", "is not valid JSON (Expecting value"),
    ("'\"red\"'", "is not a JSON list of strings"),
    ("'{\"red\": 1}'", "is not a JSON list of strings"),
    ("'[1, null]'", "is not a JSON list of strings"),
    ("CAST(X'5B22FF225D' AS TEXT)", "is not valid UTF-8"),
    ("'[\"\\ud800x\"]'", "contains a lone surrogate"),
])
def test_edited_answer_labels_named(study_path, labels_sql, problem):
    _edit_answer(study_path, labels_sql)
    with Study(study_path) as study:
        for read in (study.answers, lambda: study.answer(1, 2)):
            with pytest.raises(ValueError) as raised:
                read()
            message = str(raised.value)
            assert f"the answer of participant 1 to dimension 2 in {study_path}" in message
            assert f"labels_json {problem}" in message
            assert "correct or delete that row" in message


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("dimensions", "abc", "is not valid JSON"),
    ("dimensions", '[0, "x"]', "is not a JSON list of distinct dimension numbers of 0 or more"),
    ("dimensions", "[-1, 0]", "is not a JSON list of distinct dimension numbers of 0 or more"),
    ("dimensions", "[0, 0]", "is not a JSON list of distinct dimension numbers of 0 or more"),
    ("dimensions", "[0, true]", "is not a JSON list of distinct dimension numbers of 0 or more"),
    ("dimensions", "[0, 40]", "lists dimension 40, but the embedding has 12 dimensions"),
    ("n_embedding_dims", "zero", "is not a whole number of 1 or more"),
    ("questions", "{}", "is not a question set"),
    ("questions", "abc", "is not valid JSON"),
])
def test_edited_study_settings_named(study_path, key, value, problem):
    with sqlite3.connect(study_path) as connection:
        connection.execute("UPDATE study SET value = ? WHERE key = ?", (value, key))
    with pytest.raises(ValueError) as raised:
        Study(study_path)
    message = str(raised.value)
    assert f"the study setting {key} in {study_path}" in message
    assert problem in message
    assert "set up the study again" in message


@pytest.mark.parametrize(("order_json", "problem"), [
    ("abc", "is not valid JSON"),
    ('["x"]', "is not a JSON list of dimension numbers"),
    ("[0, true]", "is not a JSON list of dimension numbers"),
])
def test_edited_participant_order_named(study_path, order_json, problem):
    with Study(study_path) as study:
        study.add_participant(order_seed=1)
    with sqlite3.connect(study_path) as connection:
        connection.execute("UPDATE participants SET order_json = ?", (order_json,))
    with Study(study_path) as study:
        for read in (study.participants, lambda: study.participant(1)):
            with pytest.raises(ValueError) as raised:
                read()
            message = str(raised.value)
            assert f"participant 1 in {study_path}: its order_json {problem}" in message
            assert "correct that row" in message


def test_edited_answer_time_named(study_path):
    _edit_answer(study_path, "'[\"red\"]'")
    with sqlite3.connect(study_path) as connection:
        connection.execute("UPDATE answers SET answered_at = CAST(X'FF' AS TEXT)")
    with Study(study_path) as study, pytest.raises(ValueError) as raised:
        study.answers()
    message = str(raised.value)
    assert "its answered_at is not valid UTF-8" in message
    assert "labels" not in message.split(":")[-1]


@pytest.mark.parametrize(("column", "value", "problem"), [
    ("top_objects_json", "oops", "is not valid JSON"),
    ("top_objects_json", "[-1, 0, 1]", "is not a JSON list of object indices from 0 to 35"),
    ("top_objects_json", "[0, 36]", "is not a JSON list of object indices from 0 to 35"),
    ("top_objects_json", "[0, 1.5]", "is not a JSON list of object indices from 0 to 35"),
    ("grid_json", "oops", "is not valid JSON"),
    ("grid_json", "[[0, 1], [2]]", "is not a JSON list of equally long rows of object indices from 0 to 35"),
    ("grid_json", "[[0, -1]]", "is not a JSON list of equally long rows of object indices from 0 to 35"),
    ("grid_json", "[0, 1]", "is not a JSON list of equally long rows of object indices from 0 to 35"),
    ("grid_json", "[]", "is not a JSON list of equally long rows of object indices from 0 to 35"),
    ("grid_json", "[[]]", "is not a JSON list of equally long rows of object indices from 0 to 35"),
    ("top_objects_json", "[]", "is not a JSON list of object indices from 0 to 35"),
])
def test_edited_dimension_objects_named(study_path, column, value, problem):
    with sqlite3.connect(study_path) as connection:
        connection.execute(f"UPDATE dimensions SET {column} = ? WHERE dimension = 3", (value,))
    with Study(study_path) as study:
        read = study.top_objects if column == "top_objects_json" else study.grid
        with pytest.raises(ValueError) as raised:
            read(3)
        read(2)
    message = str(raised.value)
    assert f"dimension 3 in {study_path}: its {column} {problem}" in message
    assert "set up the study again" in message


def test_export_reads_one_snapshot_while_answers_arrive(study_path, tmp_path, monkeypatch):
    answer = Answer(labels=("red",), kind="visual", interpretability="one")
    with Study(study_path) as study:
        participant, _ = study.add_participant(order_seed=1)
        study.save_answer(participant.participant_id, 0, answer)
    read_participants = Study.participants

    def participants_then_new_answer(study):
        # A participant of a running server consents and answers right after this read.
        participants = read_participants(study)
        with Study(study_path) as other:
            late, _ = other.add_participant(order_seed=2)
            other.save_answer(late.participant_id, 1, answer)
        return participants

    monkeypatch.setattr(Study, "participants", participants_then_new_answer)
    with Study(study_path) as study:
        assert study.export_answers(tmp_path / "answers.csv") == 1
        assert not study.connection.in_transaction
    rows = list(csv.DictReader((tmp_path / "answers.csv").open(encoding="utf-8")))
    assert [(row["participant_id"], row["dimension"]) for row in rows] == [("1", "0")]


def test_export_names_dimension_missing_from_order(study_path, tmp_path):
    with Study(study_path) as study:
        participant, _ = study.add_participant(order_seed=1)
        study.save_answer(participant.participant_id, 3, Answer(labels=("red",), kind="visual",
                                                                interpretability="one"))
    with sqlite3.connect(study_path) as connection:
        connection.execute("UPDATE participants SET order_json = '[0, 1, 2, 4]'")
    with Study(study_path) as study, pytest.raises(ValueError) as raised:
        study.export_answers(tmp_path / "answers.csv")
    message = str(raised.value)
    assert f"participant 1 in {study_path} answered dimension 3, which its order_json [0, 1, 2, 4] lacks" in message
    assert not (tmp_path / "answers.csv").exists()


def test_export_names_answer_without_participant(study_path, tmp_path):
    with Study(study_path) as study:
        participant, _ = study.add_participant(order_seed=1)
        study.save_answer(participant.participant_id, 3, Answer(labels=("red",), kind="visual",
                                                                interpretability="one"))
    with sqlite3.connect(study_path) as connection:
        connection.execute("PRAGMA foreign_keys = OFF")
        connection.execute("UPDATE answers SET participant_id = 8")
    with Study(study_path) as study, pytest.raises(ValueError) as raised:
        study.export_answers(tmp_path / "answers.csv")
    assert f"{study_path} has an answer of participant 8 to dimension 3, but no such participant" in str(
        raised.value
    )


def test_non_utf8_study_setting_named(study_path):
    with sqlite3.connect(study_path) as connection:
        connection.execute("UPDATE study SET value = CAST(X'72756EFF' AS TEXT) WHERE key = 'embedding_name'")
    with pytest.raises(ValueError) as raised:
        Study(study_path)
    message = str(raised.value)
    assert f"the study setting embedding_name in {study_path} is not valid UTF-8" in message
    assert "b'run\\xff'" in message


@pytest.mark.parametrize("column", ["order_json", "consented_at"])
def test_non_utf8_participant_column_named(study_path, column):
    with Study(study_path) as study:
        study.add_participant(order_seed=1)
    with sqlite3.connect(study_path) as connection:
        connection.execute(f"UPDATE participants SET {column} = CAST(X'5BFF' AS TEXT)")
    with Study(study_path) as study:
        for read in (study.participants, lambda: study.participant(1)):
            with pytest.raises(ValueError) as raised:
                read()
            assert f"participant 1 in {study_path}: its {column} is not valid UTF-8" in str(raised.value)


def test_export_round_trips_tricky_labels(study_path, tmp_path):
    # Labels that CSV must quote, and ones that readers tend to misread.
    tricky = [("a, b", 'say "hi"', "x;y", "NA", "=SUM(A1)"), ("-5", "null", "\u05e9\u05dc\u05d5\u05dd!", "\U0001f600")]
    with Study(study_path) as study:
        participant, _ = study.add_participant(order_seed=2)
        for dimension, labels in zip(participant.order, tricky):
            study.save_answer(participant.participant_id, dimension,
                              validate_answer(study.questions, labels, "mixed", "several"))
        assert study.export_answers(tmp_path / "answers.csv") == 2
    with sqlite3.connect(study_path) as connection:
        stored = dict(connection.execute("SELECT dimension, labels_json FROM answers"))
    with open(tmp_path / "answers.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(stored) == 2
    for row in rows:
        labels = [row[f"label_{number}"] for number in range(1, 6)]
        expected = json.loads(stored[int(row["dimension"])])
        assert labels == expected + [""] * (5 - len(expected))


def test_setup_rejects_undecodable_grid_images(tmp_path, labeling_run, image_set):
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(image_set[0], folder)
    names = image_set[1]
    # Objects 0 and 1 (bird photos) are in the grid of dimension 0.
    truncated = folder / names[0]
    truncated.write_bytes(truncated.read_bytes()[:100])
    empty = folder / names[1]
    empty.write_bytes(b"")

    with pytest.raises(ValueError, match=r"2 grid images cannot be decoded") as raised:
        create_study(tmp_path / "s.db", labeling_run, folder, dims="0")

    assert str(truncated.resolve()) in str(raised.value)
    assert str(empty.resolve()) in str(raised.value)
    assert "empty file" in str(raised.value)
    assert not (tmp_path / "s.db").exists()


def test_image_found_by_object_id_upper_case_extension(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "cat.JPG").write_bytes(b"x")
    assert resolve_image(images, "cat", "") == "cat.JPG"


def test_image_found_by_object_id_skips_hidden_files(tmp_path):
    images = tmp_path / "images"
    (images / "aardvark").mkdir(parents=True)
    # macOS writes AppleDouble files (._name) next to copied photos.
    (images / "aardvark" / "._aardvark_01.jpg").write_bytes(b"\x00\x05\x16\x07")
    (images / "aardvark" / "aardvark_01.jpg").write_bytes(b"x")
    assert resolve_image(images, "aardvark", "") == "aardvark/aardvark_01.jpg"


def test_setup_warns_about_animated_grid_images(tmp_path, labeling_run, image_set, caplog):
    import shutil

    from PIL import Image

    folder = tmp_path / "images"
    shutil.copytree(image_set[0], folder)
    table = read_object_table(labeling_run / "objects.tsv")
    # Object 0 (a bird photo) is in the grid of dimension 0; it becomes a two-frame animated PNG.
    animated = folder / table.sources[0]
    first = Image.open(animated).convert("RGB")
    first.save(animated, save_all=True, append_images=[Image.new("RGB", first.size)])

    with caplog.at_level(logging.WARNING, logger="dimalign.labeling.study"):
        create_study(tmp_path / "s.db", labeling_run, folder, dims="0")

    assert "1 grid images have several frames" in caplog.text
    assert str(animated.resolve()) in caplog.text


def test_close_locked_study_named(study_path):
    holder = sqlite3.connect(study_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    connection = sqlite3.connect(study_path, timeout=0.1, isolation_level=None)
    connection.row_factory = sqlite3.Row
    try:
        with pytest.raises(sqlite3.OperationalError) as error:
            Study(study_path, connection=connection).set_closed(True)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        connection.close()

    assert str(error.value) == (
        f"cannot write the study database {study_path}, because another program holds its write lock "
        "(database is locked): close programs that have the study open with unsaved changes, such as an "
        "SQLite browser, then run the command again"
    )
    with Study(study_path) as study:
        assert study.closed_at is None


def test_decoded_image_cached_until_file_changes(tmp_path):
    import io

    from PIL import Image

    from dimalign.features.recorded import Decoding
    from dimalign.labeling.study import decoded_image

    path = tmp_path / "a.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    first = decoded_image(path, Decoding((0, 0, 255))).data
    again = decoded_image(path, Decoding((0, 0, 255))).data
    other_background = decoded_image(path, Decoding((0, 255, 0))).data
    Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(path)
    os.utime(path, ns=(1, 1))
    changed = decoded_image(path, Decoding((0, 0, 255))).data

    assert again is first
    assert Image.open(io.BytesIO(first)).getpixel((4, 4)) == (0, 0, 255)
    assert Image.open(io.BytesIO(other_background)).getpixel((4, 4)) == (0, 255, 0)
    assert Image.open(io.BytesIO(changed)).getpixel((4, 4)) == (255, 0, 0)


def test_decoded_cache_sees_same_time_copy(tmp_path):
    # cp -p and rsync -a keep the modification time, and BMP files of equal pixel size have equal length.
    import io
    import shutil

    from PIL import Image

    from dimalign.features.recorded import Decoding
    from dimalign.labeling.study import decoded_image

    path = tmp_path / "a.bmp"
    replacement = tmp_path / "b.bmp"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    Image.new("RGB", (8, 8), (0, 255, 0)).save(replacement)
    os.utime(path, ns=(10**18, 10**18))
    os.utime(replacement, ns=(10**18, 10**18))
    first = decoded_image(path, Decoding((0, 0, 255))).data
    shutil.copy2(replacement, tmp_path / "b-copy.bmp")
    os.replace(tmp_path / "b-copy.bmp", path)
    assert path.stat().st_size == replacement.stat().st_size
    assert path.stat().st_mtime_ns == 10**18

    replaced = decoded_image(path, Decoding((0, 0, 255))).data

    assert Image.open(io.BytesIO(first)).getpixel((4, 4)) == (255, 0, 0)
    assert Image.open(io.BytesIO(replaced)).getpixel((4, 4)) == (0, 255, 0)


def slow_counted_decodes(monkeypatch, started, release):
    """Make the study module's decoder wait for ``release`` after setting ``started``, and return the decoded paths."""
    from dimalign.labeling import study as study_module

    decoded = []
    original = study_module._decode_and_encode

    def waiting_decode(path, decoding):
        decoded.append(os.fspath(path))
        started.set()
        assert release.wait(timeout=30)
        return original(path, decoding)

    monkeypatch.setattr(study_module, "_decode_and_encode", waiting_decode)
    return decoded


def test_concurrent_requests_decode_once(tmp_path, monkeypatch):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from dimalign.features.recorded import Decoding
    from dimalign.labeling.study import decoded_image

    path = tmp_path / "a.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    started, release = threading.Event(), threading.Event()
    decoded = slow_counted_decodes(monkeypatch, started, release)

    with ThreadPoolExecutor(max_workers=6) as pool:
        first = pool.submit(decoded_image, path, Decoding((0, 0, 255)))
        assert started.wait(timeout=30)
        others = [pool.submit(decoded_image, path, Decoding((0, 0, 255))) for _ in range(5)]
        time.sleep(0.3)
        release.set()
        results = [first.result(timeout=30)] + [future.result(timeout=30) for future in others]

    assert decoded == [os.fspath(path)]
    assert all(result is results[0] for result in results)
    assert results[0].mimetype == "image/webp"


def test_decoding_keeps_cache_available(tmp_path, monkeypatch):
    """While one file is decoded, a cached file is returned at once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from dimalign.features.recorded import Decoding
    from dimalign.labeling.study import decoded_image

    cached_path, slow_path = tmp_path / "cached.png", tmp_path / "slow.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(cached_path)
    Image.new("RGBA", (8, 8), (0, 255, 0, 0)).save(slow_path)
    cached = decoded_image(cached_path, Decoding((0, 0, 255)))
    started, release = threading.Event(), threading.Event()
    decoded = slow_counted_decodes(monkeypatch, started, release)

    with ThreadPoolExecutor(max_workers=2) as pool:
        slow = pool.submit(decoded_image, slow_path, Decoding((0, 0, 255)))
        assert started.wait(timeout=30)
        again = pool.submit(decoded_image, cached_path, Decoding((0, 0, 255)))
        returned = again.result(timeout=5)
        release.set()
        slow.result(timeout=30)

    assert returned is cached
    assert decoded == [os.fspath(slow_path)]


def test_concurrent_decode_error_shared(tmp_path, monkeypatch):
    """Every request waiting for a file that cannot be decoded gets the error, which is not cached."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from dimalign.features.decode import ImageReadError
    from dimalign.features.recorded import Decoding
    from dimalign.labeling.study import decoded_image

    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image")
    started, release = threading.Event(), threading.Event()
    decoded = slow_counted_decodes(monkeypatch, started, release)

    with ThreadPoolExecutor(max_workers=3) as pool:
        first = pool.submit(decoded_image, path, Decoding())
        assert started.wait(timeout=30)
        second = pool.submit(decoded_image, path, Decoding())
        time.sleep(0.3)
        release.set()
        errors = [future.exception(timeout=30) for future in (first, second)]
    with pytest.raises(ImageReadError, match="not an image file Pillow can read"):
        decoded_image(path, Decoding())

    assert all(isinstance(error, ImageReadError) for error in errors)
    assert decoded == [os.fspath(path)] * 2


class ConcurrentDecodes:
    """The decodes of :func:`track_concurrent_decodes`: the most at once, and the files decoded beside others."""

    def __init__(self) -> None:
        self.running = 0
        self.max_running = 0
        self.beside_others: set[str] = set()
        self.lock = threading.Lock()


def track_concurrent_decodes(monkeypatch, seconds=0.2):
    """Make every decode take ``seconds`` longer, and return the record of how many ran at once."""
    from dimalign.labeling import study as study_module

    tracked = ConcurrentDecodes()
    original = study_module._decode_and_encode

    def decode(path, decoding):
        with tracked.lock:
            tracked.running += 1
            tracked.max_running = max(tracked.max_running, tracked.running)
            if tracked.running > 1:
                tracked.beside_others.add(Path(path).name)
        time.sleep(seconds)
        with tracked.lock:
            tracked.running -= 1
        return original(path, decoding)

    monkeypatch.setattr(study_module, "_decode_and_encode", decode)
    return tracked


def test_concurrent_decodes_limited(tmp_path, monkeypatch):
    """Decoding a 12-megapixel photo takes about 90 MB, so requests for many files decode a few at a time."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from dimalign.features.recorded import Decoding
    from dimalign.labeling import study as study_module

    paths = []
    for number in range(6):
        paths.append(tmp_path / f"{number}.png")
        Image.new("RGBA", (8, 8), (40 * number, 0, 0, 255)).save(paths[-1])
    monkeypatch.setattr(study_module, "_decode_slots", threading.BoundedSemaphore(2))
    tracked = track_concurrent_decodes(monkeypatch)
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda path: study_module.decoded_image(path, Decoding()), paths))

    assert tracked.max_running == 2
    assert len({result.data for result in results}) == 6
    assert study_module.MAX_CONCURRENT_DECODES == min(8, os.cpu_count() or 1)


def test_concurrent_decodes_limited_by_pixels(tmp_path, monkeypatch):
    """A 121-megapixel image took about 930 MB to decode, so large images decode fewer at a time."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from dimalign.features.recorded import Decoding
    from dimalign.labeling import study as study_module

    paths = []
    for number in range(4):
        paths.append(tmp_path / f"{number}.png")
        Image.new("RGB", (8, 8), (40 * number, 0, 0)).save(paths[-1])
    paths.append(tmp_path / "large.png")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(paths[-1])
    # The app checks each file on its first request, which records its size.
    for path in paths:
        study_module._check_image_file(path)
    monkeypatch.setattr(study_module, "_decode_slots", threading.BoundedSemaphore(4))
    # Two 8 x 8 images fit in 150 pixels at once, and the 20 x 20 image takes all of them.
    monkeypatch.setattr(study_module, "_decode_pixels", study_module.PixelBudget(150))
    tracked = track_concurrent_decodes(monkeypatch)
    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(lambda path: study_module.decoded_image(path, Decoding()), paths))

    assert tracked.max_running == 2
    assert "large.png" not in tracked.beside_others
    assert len({result.data for result in results}) == 5
    assert study_module.MAX_DECODE_PIXELS == study_module.MAX_CONCURRENT_DECODES * 12_000_000


def test_error_after_decode_leaves_none_pending(tmp_path, monkeypatch):
    """An error after the decoding itself is raised and leaves no decoding pending for later requests."""
    import threading

    from PIL import Image

    from dimalign.features.recorded import Decoding
    from dimalign.labeling import study as study_module

    path = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    real_version = study_module.image_file_version

    def failing_version(file_path):
        raise RuntimeError(f"cannot stat {file_path}")

    monkeypatch.setattr(study_module, "image_file_version", failing_version)
    with pytest.raises(RuntimeError, match="cannot stat"):
        study_module.decoded_image(path, Decoding())
    monkeypatch.setattr(study_module, "image_file_version", real_version)
    # The request runs in a daemon thread, because one that waits for a pending decoding never returns.
    results = []
    thread = threading.Thread(
        target=lambda: results.append(study_module.decoded_image(path, Decoding())), daemon=True
    )
    thread.start()
    thread.join(timeout=30)

    assert not thread.is_alive()
    assert [result.mimetype for result in results] == ["image/webp"]
    assert study_module._decodings_in_progress == {}


def test_decode_of_changing_file_not_cached(tmp_path, monkeypatch):
    """A file replaced while it is decoded may have given the new pixels, so the result is not cached."""
    import collections
    import shutil

    from PIL import Image

    from dimalign.features.recorded import Decoding
    from dimalign.labeling import study as study_module

    path = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    monkeypatch.setattr(study_module, "_decoded_cache", collections.OrderedDict())
    real_decode_and_encode = study_module._decode_and_encode

    def decode_then_replace(file_path, decoding):
        result = real_decode_and_encode(file_path, decoding)
        shutil.copy2(path, tmp_path / "copy.tmp")
        os.replace(tmp_path / "copy.tmp", path)
        return result

    monkeypatch.setattr(study_module, "_decode_and_encode", decode_then_replace)

    served = study_module.decoded_image(path, Decoding())

    assert served.mimetype == "image/webp"
    assert list(study_module._decoded_cache) == []
    assert study_module._decodings_in_progress == {}


class SignallingCondition(threading.Condition):
    """A condition that sets ``waiting`` each time a thread starts to wait on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout=None):
        self.waiting.set()
        return super().wait(timeout)


def watched_pixel_budget(study_module, pixels):
    """Return a pixel budget of ``pixels`` whose condition sets an event when a decode waits for room."""
    budget = study_module.PixelBudget(pixels)
    budget._condition = SignallingCondition()
    return budget


def held_decodes(monkeypatch, held_name, started, release):
    """Make the decoder wait for ``release`` on the file ``held_name``, and return the decoded names in order."""
    from dimalign.labeling import study as study_module

    decoded = []
    original = study_module._decode_and_encode

    def decode(path, decoding):
        decoded.append(Path(path).name)
        if Path(path).name == held_name:
            started.set()
            assert release.wait(timeout=30)
        return original(path, decoding)

    monkeypatch.setattr(study_module, "_decode_and_encode", decode)
    return decoded


def test_pixel_wait_frees_decode_slot(tmp_path, monkeypatch):
    """A large decode that waits for pixel room takes no decode slot, so a small decode runs meanwhile."""
    from concurrent.futures import ThreadPoolExecutor, wait

    from PIL import Image

    from dimalign.features.recorded import Decoding
    from dimalign.labeling import study as study_module

    sizes = {"running.png": (8, 8), "large.png": (10, 10), "small.png": (4, 4)}
    paths = {}
    for name, size in sizes.items():
        paths[name] = tmp_path / name
        Image.new("RGB", size, (200, 0, 0)).save(paths[name])
    monkeypatch.setattr(study_module, "_decode_slots", threading.BoundedSemaphore(2))
    # The running 64 pixels leave 36 of 100: too few for the large 100, enough for the small 16.
    budget = watched_pixel_budget(study_module, 100)
    monkeypatch.setattr(study_module, "_decode_pixels", budget)
    started, release = threading.Event(), threading.Event()
    decoded = held_decodes(monkeypatch, "running.png", started, release)

    with ThreadPoolExecutor(max_workers=3) as pool:
        running = pool.submit(study_module.decoded_image, paths["running.png"], Decoding())
        assert started.wait(timeout=30)
        large = pool.submit(study_module.decoded_image, paths["large.png"], Decoding())
        assert budget._condition.waiting.wait(timeout=30)
        small = pool.submit(study_module.decoded_image, paths["small.png"], Decoding())
        wait([small], timeout=10)
        decoded_before_release = list(decoded)
        release.set()
        results = [future.result(timeout=30) for future in (running, large, small)]

    assert decoded_before_release == ["running.png", "small.png"]
    assert decoded == ["running.png", "small.png", "large.png"]
    assert [result.mimetype for result in results] == ["image/webp"] * 3


@pytest.mark.parametrize(("mode", "transparency", "pixels"), [
    ("RGB", None, 100), ("L", None, 100), ("P", None, 100), ("CMYK", None, 100),
    ("RGBA", None, 700), ("LA", None, 700), ("I;16", None, 700), ("P", 0, 700), ("RGB", (0, 0, 0), 700),
], ids=["RGB", "L", "P", "CMYK", "RGBA", "LA", "I;16", "P transparent", "RGB colour key"])
def test_decode_pixels_weigh_alpha(tmp_path, mode, transparency, pixels):
    """Images with transparency or 16-bit values count seven times their pixels, as their decoding needs."""
    from PIL import Image

    from dimalign.labeling import study as study_module

    path = tmp_path / ("image.tif" if mode == "CMYK" else "image.png")
    options = {} if transparency is None else {"transparency": transparency}
    Image.new(mode, (10, 10)).save(path, **options)

    check, _ = study_module._check_image_file(path)

    assert check.pixels == pixels
    assert study_module.HEAVY_PIXEL_WEIGHT == 7


def test_unchecked_decode_counts_header_pixels(tmp_path, monkeypatch):
    """A file that setup listed to decode is never checked first, so its pixels come from its header."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from dimalign.features.recorded import Decoding
    from dimalign.labeling import study as study_module

    running_path, large_path = tmp_path / "running.png", tmp_path / "large.png"
    Image.new("RGB", (8, 8), (200, 0, 0)).save(running_path)
    # 400 pixels exceed the whole budget of 100, so the large file decodes alone.
    Image.new("RGB", (20, 20), (0, 0, 200)).save(large_path)
    monkeypatch.setattr(study_module, "_decode_slots", threading.BoundedSemaphore(4))
    budget = watched_pixel_budget(study_module, 100)
    monkeypatch.setattr(study_module, "_decode_pixels", budget)
    started, release = threading.Event(), threading.Event()
    decoded = held_decodes(monkeypatch, "running.png", started, release)

    with ThreadPoolExecutor(max_workers=2) as pool:
        running = pool.submit(study_module.decoded_image, running_path, Decoding())
        assert started.wait(timeout=30)
        large = pool.submit(study_module.decoded_image, large_path, Decoding())
        large_waited = budget._condition.waiting.wait(timeout=10)
        decoded_before_release = list(decoded)
        release.set()
        results = [future.result(timeout=30) for future in (running, large)]

    assert large_waited
    assert decoded_before_release == ["running.png"]
    assert decoded == ["running.png", "large.png"]
    assert [result.mimetype for result in results] == ["image/webp"] * 2


def test_transient_open_error_not_cached(tmp_path, monkeypatch):
    """A file that Pillow could not open once, such as with too many open files, is checked again."""
    import errno

    from PIL import Image

    from dimalign.features.recorded import Decoding
    from dimalign.labeling import study as study_module

    path = tmp_path / "photo.jpg"
    Image.new("RGB", (1200, 900), (200, 100, 50)).save(path, quality=90)
    open_image = Image.open
    failures = [OSError(errno.EMFILE, "Too many open files", str(path))]

    def open_failing_once(*args, **kwargs):
        if failures:
            raise failures.pop()
        return open_image(*args, **kwargs)

    monkeypatch.setattr(Image, "open", open_failing_once)

    failed, failed_checked_now = study_module._check_image_file(path)
    check, checked_now = study_module._check_image_file(path)
    served = study_module.decoded_image(path, Decoding())

    assert failures == []
    assert (failed.shown_otherwise, failed.pixels, failed_checked_now) == (True, 0, False)
    assert checked_now
    assert (check.shown_otherwise, check.longer_side, check.pixels) == (False, 1200, 1200 * 900)
    assert check.lossy
    assert check.mimetype == "image/jpeg"
    assert served.mimetype == "image/jpeg"
