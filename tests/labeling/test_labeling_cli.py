"""The `dimalign label-app` and `dimalign labels` commands."""

from __future__ import annotations

import csv
import io
import json

import pytest
from labeling_helpers import write_protected

from dimalign.cli import main
from dimalign.labeling import commands
from dimalign.labeling.answers import Answer
from dimalign.labeling.study import Study


def test_setup_then_export(tmp_path, labeling_run, image_set, capsys):
    study = tmp_path / "study.db"
    status = main(["label-app", "setup", str(study), "--run", str(labeling_run), "--images", str(image_set[0]),
                   "--dims", "0,2"])
    assert status == 0
    assert "2 dimensions" in capsys.readouterr().out
    with Study(study) as opened:
        participant, _ = opened.add_participant()
        opened.save_answer(participant.participant_id, 2, Answer(labels=("x",), kind="visual", interpretability="one"))

    assert main(["label-app", "export", str(study), "-o", str(tmp_path / "answers.csv")]) == 0
    with open(tmp_path / "answers.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["dimension"], row["label_1"]) for row in rows] == [("2", "x")]


def test_setup_names_one_dimension_in_singular(tmp_path, labeling_run, image_set, capsys):
    study = tmp_path / "study.db"
    status = main(["label-app", "setup", str(study), "--run", str(labeling_run), "--images", str(image_set[0]),
                   "--dims", "3"])
    assert status == 0
    assert f"created {study} with 1 dimension; serve it" in capsys.readouterr().out


def test_setup_error_reported(tmp_path, labeling_run, image_set, capsys):
    status = main(["label-app", "setup", str(tmp_path / "s.db"), "--run", str(labeling_run),
                   "--images", str(image_set[0]), "--dims", "40"])
    assert status == 1
    assert "dimension '40' in --dims '40' does not exist: the embedding has dimensions 0..11" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


def test_setup_requires_images(tmp_path, labeling_run):
    with pytest.raises(SystemExit):
        main(["label-app", "setup", str(tmp_path / "s.db"), "--run", str(labeling_run)])


def test_serve_options_parsed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        commands, "_serve", lambda study, host, port, images=None: calls.append((study, host, port, images)) or 0
    )
    assert main(["label-app", "serve", str(tmp_path / "s.db"), "--port", "0"]) == 0
    assert main(["label-app", "serve", str(tmp_path / "s.db"), "--images", str(tmp_path / "pics")]) == 0
    assert calls == [(tmp_path / "s.db", "127.0.0.1", 0, None), (tmp_path / "s.db", "127.0.0.1", 8000, tmp_path / "pics")]


def test_summarize_command(tmp_path, study_path, capsys):
    with Study(study_path) as study:
        for rater in range(2):
            participant, _ = study.add_participant(order_seed=rater)
            for dimension in study.dimensions:
                study.save_answer(participant.participant_id, dimension,
                                  Answer(labels=("red",), kind="visual", interpretability="one"))
    out = tmp_path / "out"
    assert main(["labels", "summarize", str(study_path), "-o", str(out), "--raters", "1,2"]) == 0
    assert "visual 100%" in capsys.readouterr().out
    assert (out / "summary.html").is_file()
    assert main(["labels", "summarize", str(study_path), "-o", str(out), "--raters", "1,x"]) == 1
    assert "invalid --raters" in capsys.readouterr().err


def test_summarize_prints_result_line(tmp_path, study_path, capsys):
    with Study(study_path) as study:
        participant, _ = study.add_participant(order_seed=0)
        for dimension in study.dimensions:
            study.save_answer(participant.participant_id, dimension,
                              Answer(labels=("red",), kind="visual", interpretability="one"))
    for quiet in ([], ["-q"]):
        out = tmp_path / f"out{''.join(quiet)}"

        assert main([*quiet, "labels", "summarize", str(study_path), "-o", str(out)]) == 0

        lines = capsys.readouterr().out.splitlines()
        assert lines[-1] == f"wrote {out / 'summary.html'}: 1 embedding"
        assert len(lines) == 2


def test_names_command(shared_data, capsys):
    labels = shared_data / "things" / "labels_66.txt"
    assert main(["labels", "names", str(labels)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 66
    assert lines[0] == "0\tmetallic/artificial"
    embedding = shared_data / "things" / "vice_embedding_42d.npy"
    assert main(["labels", "names", str(labels), "--embedding", str(embedding)]) == 1
    assert "66 labels but the embedding has 42 dimensions" in capsys.readouterr().err


def answered_study(study_path):
    with Study(study_path) as opened:
        participant, _ = opened.add_participant(order_seed=0)
        opened.save_answer(participant.participant_id, opened.dimensions[0],
                           Answer(labels=("x",), kind="visual", interpretability="one"))
    return study_path


def test_export_rejects_study_itself(study_path, capsys):
    answered_study(study_path)
    before = study_path.read_bytes()
    for extra in ([], ["--overwrite"]):
        status = main(["label-app", "export", str(study_path), "-o", str(study_path), *extra])
        assert status == 1
        assert f"the export file {study_path} is the study database" in capsys.readouterr().err
    assert study_path.read_bytes() == before
    with Study(study_path) as opened:
        assert len(opened.answers()) == 1


def test_export_existing_file_needs_overwrite(study_path, tmp_path, capsys):
    answered_study(study_path)
    target = tmp_path / "embedding.npz"
    target.write_bytes(b"keep me")
    assert main(["label-app", "export", str(study_path), "-o", str(target)]) == 1
    assert f"the export file {target} exists: add --overwrite" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"
    assert main(["label-app", "export", str(study_path), "-o", str(target), "--overwrite"]) == 0
    assert target.read_text().startswith("participant_id,dimension,position,label_1")


def test_export_into_folder_named(study_path, tmp_path, capsys):
    folder = tmp_path / "sum3"
    folder.mkdir()
    assert main(["label-app", "export", str(study_path), "-o", str(folder)]) == 1
    error = capsys.readouterr().err
    assert f"the export file {folder} is a folder: give a file name, such as {folder / 'answers.csv'}" in error
    assert list(folder.iterdir()) == []


def test_export_dash_writes_standard_output(study_path, tmp_path, monkeypatch, capsys):
    answered_study(study_path)
    monkeypatch.chdir(tmp_path)
    assert main(["label-app", "export", str(study_path), "-o", "-"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert [(row["participant_id"], row["label_1"]) for row in rows] == [("1", "x")]
    assert f"wrote 1 answer of {study_path} to standard output" in captured.err
    assert not (tmp_path / "-").exists()


def test_export_to_file_named_dash(study_path, tmp_path, monkeypatch, capsys):
    answered_study(study_path)
    monkeypatch.chdir(tmp_path)
    assert main(["label-app", "export", str(study_path), "-o", "./-"]) == 0
    assert (tmp_path / "-").read_text().startswith("participant_id,dimension,position,label_1")
    assert capsys.readouterr().out == "wrote ./-: 1 answer\n"


def test_export_creates_missing_folder_and_logs_it(study_path, tmp_path, capsys):
    answered_study(study_path)
    target = tmp_path / "new" / "deeper" / "answers.csv"
    assert main(["label-app", "export", str(study_path), "-o", str(target)]) == 0
    assert target.read_text().startswith("participant_id,dimension,position,label_1")
    assert f"created the folder {target.parent} for the export file" in capsys.readouterr().err


def test_export_below_file_named(study_path, tmp_path, capsys):
    answered_study(study_path)
    blocker = tmp_path / "results"
    blocker.write_text("keep me")
    target = blocker / "answers.csv"
    assert main(["label-app", "export", str(study_path), "-o", str(target)]) == 1
    error = capsys.readouterr().err
    assert f"the export file {target} cannot be created, because {blocker} is a file" in error
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("port", ["70000", "-5", "http"])
def test_invalid_port_rejected(tmp_path, port, capsys):
    with pytest.raises(SystemExit):
        main(["label-app", "serve", str(tmp_path / "s.db"), "--port", port])
    assert f"invalid port '{port}': use 0 to 65535" in capsys.readouterr().err


def test_non_ascii_admin_variable_rejected(study_path, monkeypatch, capsys):
    monkeypatch.setenv(commands.ADMIN_TOKEN_VARIABLE, "p\u00e4ssw\u00f6rd")
    assert main(["label-app", "serve", str(study_path), "--port", "0"]) == 1
    assert "DIMALIGN_ADMIN_TOKEN: invalid admin token" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "export", "summarize"])
def test_text_file_study_one_line_error(tmp_path, command, capsys):
    study = tmp_path / "text.db"
    study.write_text("hello\n")
    arguments = {
        "serve": ["label-app", "serve", str(study), "--port", "0"],
        "export": ["label-app", "export", str(study), "-o", str(tmp_path / "a.csv")],
        "summarize": ["labels", "summarize", str(study), "-o", str(tmp_path / "out")],
    }[command]
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"{study} is not an SQLite database (file is not a database)" in error
    assert study.read_text() == "hello\n"
    assert sorted(item.name for item in tmp_path.iterdir()) == ["text.db"]


def test_setup_error_names_study_not_temporary(tmp_path, labeling_run, image_set, capsys):
    target = tmp_path / "missing-folder-file"
    target.write_text("a file, so no folder can be created below it")
    study = target / "s2.db"
    status = main(["label-app", "setup", str(study), "--run", str(labeling_run), "--images", str(image_set[0])])
    assert status == 1
    error = capsys.readouterr().err
    assert f"cannot write the study database {study}" in error
    assert ".tmp" not in error


def test_export_through_link_keeps_wal(study_path, tmp_path, capsys):
    link = tmp_path / "link.db"
    link.symlink_to(study_path.name)
    wal = tmp_path / "study.db-wal"
    # An open connection keeps its committed participant in the write-ahead log.
    with Study(study_path) as holder:
        holder.add_participant(order_seed=0)
        assert wal.stat().st_size > 0
        status = main(["label-app", "export", str(link), "-o", str(wal), "--overwrite"])
        assert status == 1
        error = capsys.readouterr().err
        assert f"the export file {wal} is the study database or one of its SQLite files ({wal})" in error
    with Study(study_path) as opened:
        assert [participant.participant_id for participant in opened.participants()] == [1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--object-names", "nonexistent.csv"],
         "--object-names nonexistent.csv is an option of the semantic check, which runs only with --semantic: "
         "add --semantic, or drop --object-names"),
        (["--semantic-k", "50"],
         "--semantic-k 50 is an option of the semantic check, which runs only with --semantic: "
         "add --semantic, or drop --semantic-k"),
        (["--n-random", "5"],
         "--n-random 5 is an option of the semantic check, which runs only with --semantic: "
         "add --semantic, or drop --n-random"),
        (["--raters", "1,,2"], "invalid --raters '1,,2': give two or three participant ids such as 1,2 or 1,2,3"),
    ],
)
def test_summarize_rejects_unused_options(study_path, tmp_path, options, message, capsys):
    out = tmp_path / "out"
    assert main(["labels", "summarize", str(study_path), "-o", str(out), *options]) == 1
    assert capsys.readouterr().err == f"dimalign labels: error: {message}\n"
    assert not out.exists()


def test_summarize_manifest_without_semantic(study_path, tmp_path):
    out = tmp_path / "out"
    assert main(["labels", "summarize", str(study_path), "-o", str(out)]) == 0
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert settings["semantic"] is False
    assert settings["semantic_k"] is None
    assert settings["n_random"] is None


@pytest.mark.parametrize("raters", ["1_0,2", "\uff11,\uff12", "+1,2", "1,2.0"])
def test_raters_need_plain_digits(study_path, tmp_path, raters, capsys):
    # Python's int() reads "1_0" as 10 and full-width digits as ASCII ones,
    # so a typo for "1,0" could silently pick participant 10.
    out = tmp_path / "out"
    assert main(["labels", "summarize", str(study_path), "-o", str(out), "--raters", raters]) == 1
    assert capsys.readouterr().err == (
        f"dimalign labels: error: invalid --raters {raters!r}: give two or three participant ids such as "
        "1,2 or 1,2,3\n"
    )
    assert not out.exists()


def test_close_and_reopen_commands(study_path, capsys):
    assert main(["label-app", "close", str(study_path)]) == 0
    closed_output = capsys.readouterr().out
    with Study(study_path) as study:
        closed_at = study.closed_at
    assert main(["label-app", "close", str(study_path)]) == 0
    again_output = capsys.readouterr().out
    assert main(["label-app", "reopen", str(study_path)]) == 0
    reopened_output = capsys.readouterr().out

    assert closed_at is not None
    assert closed_output == (
        f"closed {study_path} to new participants, and participants already in it can finish. "
        f"Reopen it with: dimalign label-app reopen {study_path}\n"
    )
    assert again_output == f"{study_path} was already closed to new participants (since {closed_at})\n"
    assert reopened_output == f"reopened {study_path} to new participants\n"
    with Study(study_path) as study:
        assert study.closed_at is None


def test_setup_conflicting_background_rejected(tmp_path, labeling_run, image_set, record_extraction, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(labeling_run, run)
    extract_dir = record_extraction(run, background=[0, 0, 0], exif_transpose=True)

    status = main(["label-app", "setup", str(tmp_path / "study.db"), "--run", str(run),
                   "--images", str(image_set[0]), "--background", "white"])

    error = capsys.readouterr().err
    assert status != 0
    assert "--background white (RGB 255,255,255) contradicts the background 0,0,0" in error
    assert str((extract_dir / "manifest.json").resolve()) in error
    assert not (tmp_path / "study.db").exists()


def test_setup_stores_recorded_decoding(tmp_path, labeling_run, image_set, record_extraction):
    import shutil

    from dimalign.features.recorded import Decoding
    from dimalign.labeling.study import Study

    run = tmp_path / "run"
    shutil.copytree(labeling_run, run)
    record_extraction(run, background=[0, 0, 0], exif_transpose=False)

    status = main(["label-app", "setup", str(tmp_path / "study.db"), "--run", str(run), "--images", str(image_set[0])])

    assert status == 0
    with Study(tmp_path / "study.db") as study:
        assert study.decoding == Decoding((0, 0, 0), False)


def test_close_read_only_study_named(study_path, capsys):
    with write_protected(study_path):
        status = main(["label-app", "close", str(study_path)])

    assert status == 1
    assert capsys.readouterr().err == (
        f"dimalign label-app: error: cannot write the study database {study_path} (attempt to write a "
        "readonly database): make the file writable, then run the command again\n"
    )
    with Study(study_path) as study:
        assert study.closed_at is None


def test_study_in_read_only_folder_named(study_path, capsys):
    with write_protected(study_path.parent):
        status = main(["label-app", "export", str(study_path), "-o", "-"])

    assert status == 1
    assert capsys.readouterr().err == (
        f"dimalign label-app: error: cannot open the study database {study_path} (unable to open database "
        f"file): SQLite writes the files study.db-wal and study.db-shm next to it, so make the folder "
        f"{study_path.parent} writable, or copy the study into a writable folder\n"
    )


def test_close_run_folder_names_labels_db(tmp_path, study_path, capsys):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(study_path, run / "labels.db")

    status = main(["label-app", "close", str(run)])

    assert status == 1
    assert capsys.readouterr().err == (
        f"dimalign label-app: error: study database {run} is a folder, not a file: the short form "
        f"`dimalign label-app RUN` keeps its study in {run / 'labels.db'}, so give that file\n"
    )
