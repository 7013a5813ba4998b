"""The `dimalign label-app` and `dimalign labels` commands."""

from __future__ import annotations

import csv

import pytest

from dimalign.cli import main
from dimalign.labeling import commands
from dimalign.labeling.study import Answer, Study


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


def test_setup_error_reported(tmp_path, labeling_run, image_set, capsys):
    status = main(["label-app", "setup", str(tmp_path / "s.db"), "--run", str(labeling_run),
                   "--images", str(image_set[0]), "--dims", "40"])
    assert status == 1
    assert "dimensions [40] do not exist" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


def test_setup_requires_images(tmp_path, labeling_run):
    with pytest.raises(SystemExit):
        main(["label-app", "setup", str(tmp_path / "s.db"), "--run", str(labeling_run)])


def test_serve_options_parsed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(commands, "_serve", lambda study, host, port: calls.append((study, host, port)) or 0)
    assert main(["label-app", "serve", str(tmp_path / "s.db"), "--port", "0"]) == 0
    assert calls == [(tmp_path / "s.db", "127.0.0.1", 0)]


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


def test_names_command(shared_data, capsys):
    labels = shared_data / "things" / "labels_66.txt"
    assert main(["labels", "names", str(labels)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 66
    assert lines[0] == "0\tmetallic/artificial"
    embedding = shared_data / "things" / "vice_embedding_42d.npy"
    assert main(["labels", "names", str(labels), "--embedding", str(embedding)]) == 1
    assert "66 labels but the embedding has 42 dimensions" in capsys.readouterr().err
