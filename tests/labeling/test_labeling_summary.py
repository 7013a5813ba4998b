"""`dimalign labels summarize`: input checks before writing, distinct embeddings, reruns and the page."""

from __future__ import annotations

import csv
import fcntl
import json
import logging
import os
import random
import sqlite3
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from dimalign.labeling import analysis, summary
from dimalign.labeling.answers import Answer, validate_answer
from dimalign.labeling.study import Study, create_study
from dimalign.labeling.summary import summarize

SIZE = (120, 60)


def rate(path: Path, labels=("red",)) -> Path:
    """Let three participants answer every dimension of a study with the same ratings."""
    with Study(path) as study:
        for seed in range(3):
            participant, _ = study.add_participant(order_seed=seed)
            for dimension in study.dimensions:
                study.save_answer(participant.participant_id, dimension,
                                  Answer(labels=tuple(labels), kind="visual", interpretability="one"))
    return path


@pytest.fixture
def two_studies(tmp_path, labeling_run, image_set):
    """Two rated studies of the same run, so both embeddings are named after the run folder."""
    first = rate(create_study(tmp_path / "first.db", labeling_run, image_set[0], dims="0-2"))
    second = rate(create_study(tmp_path / "second.db", labeling_run, image_set[0], dims="3-5"))
    return first, second


def write_relevance(path: Path, dims) -> Path:
    pd.DataFrame({"triplet_index": range(len(dims)), "most_relevant_dim": dims}).to_csv(path, index=False)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(item.name for item in folder.iterdir() if item.name.startswith("."))


def test_same_study_twice_rejected(two_studies, tmp_path):
    first, _ = two_studies
    with pytest.raises(ValueError, match=f"the study {first} is given twice: give each study once"):
        summarize([first, first], tmp_path / "out", wordcloud_size=SIZE)
    assert not (tmp_path / "out").exists()


def test_same_embedding_names_rejected(two_studies, tmp_path, labeling_run):
    first, second = two_studies
    name = labeling_run.name
    message = (f"the studies {first} and {second} both label an embedding named '{name}'.*"
               f"--embedding-names {name}-a,{name}-b")
    with pytest.raises(ValueError, match=message):
        summarize([first, second], tmp_path / "out", wordcloud_size=SIZE)
    assert not (tmp_path / "out").exists()


def test_embedding_names_keep_studies_apart(two_studies, tmp_path):
    out = tmp_path / "out"
    headline = summarize(two_studies, out, embedding_names=["human", "dnn"], wordcloud_size=SIZE)
    assert headline["embeddings"] == ["human", "dnn"]
    assert headline["raters"] == {"human": [1, 2, 3], "dnn": [1, 2, 3]}
    shares = pd.read_csv(out / "shares.csv")
    assert shares.groupby("embedding", sort=False)["n_dimensions"].sum().to_dict() == {"human": 3, "dnn": 3}
    clouds = sorted(path.name for path in (out / "wordclouds").iterdir())
    assert clouds == ["dnn_dim3.png", "dnn_dim4.png", "dnn_dim5.png",
                      "human_dim0.png", "human_dim1.png", "human_dim2.png"]
    assert len(pd.read_csv(out / "dimensions.csv")) == 6


def test_invalid_embedding_name_rejected(two_studies, tmp_path):
    with pytest.raises(ValueError, match="invalid embedding name 'a/b'"):
        summarize(two_studies, tmp_path / "out", embedding_names=["a/b", "c"], wordcloud_size=SIZE)


@pytest.mark.parametrize("case", ["bad relevance", "text study", "k 1", "k 1000", "seed -1", "names"])
def test_failed_summary_writes_nothing(two_studies, tmp_path, case):
    first, second = two_studies
    good = write_relevance(tmp_path / "good.csv", [0, 1])
    bad = tmp_path / "bad.csv"
    bad.write_text("triplet_index,most_relevant_dim\n")
    text_study = tmp_path / "text.db"
    text_study.write_text("hello\n")
    names = tmp_path / "names.csv"
    names.write_text("id,word\nfoo,bar\n")
    out = tmp_path / "new" / "out"
    arguments = {
        "bad relevance": ([first, second], {"relevance": [good, bad], "embedding_names": ["a", "b"]},
                          f"relevance file {bad} has a header but no rows"),
        "text study": ([first, text_study], {}, f"{text_study} is not an SQLite database"),
        "k 1": ([first], {"semantic": True, "semantic_k": 1}, "invalid --semantic-k 1: compare at least 2"),
        "k 1000": ([first], {"semantic": True, "semantic_k": 1000},
                   f"invalid --semantic-k 1000: the study {first} stores 20 top objects per dimension, "
                   "so use at most 20"),
        "seed -1": ([first], {"semantic": True, "random_state": -1}, "invalid --seed -1: use a seed of 0 or more"),
        "names": ([first], {"semantic": True, "object_names": names},
                  f"object names file {names} names none of the study's 36 objects"),
    }
    studies, options, message = arguments[case]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        summarize(studies, out, wordcloud_size=SIZE, **options)
    assert not out.parent.exists()
    assert leftovers(tmp_path) == []


def test_failed_summary_keeps_new_folder_with_other_files(two_studies, tmp_path, monkeypatch):
    # The run created new/, and another program wrote into it meanwhile.
    first, _ = two_studies
    parent = tmp_path / "new"

    def fail_after_another_program_writes(*args, **kwargs):
        (parent / "other.txt").write_text("written by another program")
        raise RuntimeError("stopped")

    monkeypatch.setattr(summary, "_write_summary", fail_after_another_program_writes)
    with pytest.raises(RuntimeError, match="stopped"):
        summarize([first], parent / "out", wordcloud_size=SIZE)
    assert sorted(path.name for path in parent.iterdir()) == ["other.txt"]


def test_rerun_removes_earlier_summary_files(two_studies, tmp_path):
    first, second = two_studies
    out = tmp_path / "out"
    summarize([first], out, relevance=[write_relevance(tmp_path / "r.csv", [0, 1, 7])], wordcloud_size=SIZE)
    assert (out / "relevance_shares.csv").is_file()
    (out / "notes.txt").write_text("mine")

    summarize([second], out, embedding_names=["other"], wordcloud_size=SIZE)
    assert not (out / "relevance_shares.csv").exists()
    clouds = sorted(path.name for path in (out / "wordclouds").iterdir())
    assert clouds == ["other_dim3.png", "other_dim4.png", "other_dim5.png"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["wordclouds"] == [f"wordclouds/{name}" for name in clouds]
    assert "relevance_shares.csv" not in manifest["outputs"]["files"]
    assert (out / "notes.txt").read_text() == "mine"
    assert leftovers(tmp_path) == []


def test_non_empty_folder_without_summary_rejected(two_studies, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_text("keep")
    with pytest.raises(FileExistsError, match=f"the output folder {out} is not empty and contains no earlier summary"):
        summarize([two_studies[0]], out, wordcloud_size=SIZE)
    assert sorted(path.name for path in out.iterdir()) == ["data.csv"]


def test_summary_folder_has_mkdir_permissions(two_studies, tmp_path):
    out = tmp_path / "out"
    summarize([two_studies[0]], out, wordcloud_size=SIZE)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


def test_image_src_url_quoted(tmp_path, labeling_run, image_set):
    run = tmp_path / "vgg#16 <i>x"
    run.mkdir()
    for name in ("embedding.npz", "objects.tsv"):
        (run / name).write_bytes((labeling_run / name).read_bytes())
    study = rate(create_study(tmp_path / "s.db", run, image_set[0], dims="0"))
    out = tmp_path / "out"
    summarize([study], out, wordcloud_size=SIZE)
    html = (out / "summary.html").read_text()
    assert 'src="wordclouds/vgg%2316%20%3Ci%3Ex_dim0.png"' in html
    assert (out / "wordclouds" / "vgg#16 <i>x_dim0.png").is_file()


def test_undrawable_labels_warned(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(analysis, "_fallback_fonts", lambda: [])
    caplog.set_level(logging.WARNING, logger="dimalign.labeling.analysis")
    analysis.write_word_cloud({"\u732b": 2, "cat": 1}, tmp_path / "a.png", width=120, height=60,
                              context="word cloud of run, dimension 0")
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith("word cloud of run, dimension 0: no installed font has glyphs for '\u732b', "
                                  "so the labels ['\u732b'] show as boxes")


def test_font_fallback_covers_labels(monkeypatch, caplog):
    dejavu = str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")
    monkeypatch.setattr(analysis, "_fallback_fonts", lambda: [dejavu])
    caplog.set_level(logging.WARNING, logger="dimalign.labeling.analysis")
    # Georgian letters are missing from wordcloud's DroidSansMono and present in DejaVu Sans.
    assert analysis.choose_font(["\u10d0\u10d1", "red"]) == dejavu
    assert caplog.records == []


def test_last_resort_font_not_a_fallback():
    assert not any("lastresort" in Path(name).name.lower() for name in analysis._fallback_fonts())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_concurrent_run_rejected(two_studies, tmp_path):
    out = tmp_path / "out"
    with open(tmp_path / ".out.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError) as raised:
            summarize([two_studies[0]], out, wordcloud_size=SIZE)
    assert str(raised.value) == (
        f"another `dimalign labels summarize` is writing to {out}: wait until it has finished, or choose "
        "another output folder"
    )
    assert not out.exists()


def test_rerun_blocked_by_folder_keeps_summary(two_studies, tmp_path):
    first, second = two_studies
    out = tmp_path / "out"
    summarize([first], out, wordcloud_size=SIZE)
    (out / "summary.json").unlink()
    (out / "summary.json").mkdir()
    before = snapshot(out)
    with pytest.raises(IsADirectoryError) as raised:
        summarize([second], out, embedding_names=["other"], wordcloud_size=SIZE)
    assert str(raised.value) == (
        f"cannot write the summary to {out}: {out / 'summary.json'} is a folder. Move it away or choose "
        "another output folder (the earlier summary was kept)"
    )
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_rerun_failing_midway_restores_summary(two_studies, tmp_path, monkeypatch):
    first, second = two_studies
    out = tmp_path / "out"
    summarize([first], out, wordcloud_size=SIZE)
    before = snapshot(out)
    real_replace = os.replace
    failures = []

    def failing_replace(source, destination):
        # Only moving the new page in fails; putting the earlier one back works.
        if Path(destination) == out / "summary.html" and not failures:
            failures.append(source)
            raise PermissionError(13, "Permission denied", str(source))
        real_replace(source, destination)

    monkeypatch.setattr(summary.os, "replace", failing_replace)
    with pytest.raises(PermissionError) as raised:
        summarize([second], out, embedding_names=["other"], wordcloud_size=SIZE)
    assert str(raised.value) == (
        f"cannot write the summary to {out} (Permission denied for {out / 'summary.html'}): choose a folder "
        "you can write to (the earlier summary was kept)"
    )
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs the Linux /proc file system")
def test_unwritable_output_named_not_temporary(two_studies):
    # No file can be created directly in /proc, not even by root.
    out = Path("/proc/dimalign-summary")
    with pytest.raises(FileNotFoundError) as raised:
        summarize([two_studies[0]], out, wordcloud_size=SIZE)
    assert str(raised.value) == (
        f"cannot write the summary to {out} (No such file or directory): choose a folder you can write to"
    )


def test_link_to_empty_folder_written_through(two_studies, tmp_path, labeling_run):
    folder = tmp_path / "real"
    folder.mkdir()
    link = tmp_path / "link"
    link.symlink_to(folder.name)
    summarize([two_studies[0]], link, wordcloud_size=SIZE)
    assert link.is_symlink()
    assert (folder / "summary.html").is_file()
    clouds = sorted(path.name for path in (folder / "wordclouds").iterdir())
    assert clouds == [f"{labeling_run.name}_dim{dimension}.png" for dimension in range(3)]
    assert leftovers(tmp_path) == []


def test_study_without_dimensions_rejected(tmp_path, labeling_run, image_set):
    # Setup rejects an embedding without dimensions, but a study written by an
    # older dimalign may have none.
    path = create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="0")
    connection = sqlite3.connect(path)
    connection.execute("UPDATE study SET value = '[]' WHERE key = 'dimensions'")
    connection.execute("DELETE FROM dimensions")
    connection.commit()
    connection.close()
    for semantic in (False, True):
        with pytest.raises(ValueError) as raised:
            summarize([path], tmp_path / "out", semantic=semantic, wordcloud_size=SIZE)
        assert str(raised.value) == (
            f"the study {path} has no dimensions, so there is nothing to summarise: set up a study "
            "with at least one dimension"
        )
        assert not (tmp_path / "out").exists()


def test_label_counted_once_per_participant(tmp_path, labeling_run, image_set):
    path = rate(create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="0"),
                labels=("dup", "dup", "Red", "red", "re\u200bd"))
    summarize([path], tmp_path / "out", wordcloud_size=SIZE)
    labels = pd.read_csv(tmp_path / "out" / "labels.csv")
    assert dict(zip(labels["label"], labels["count"])) == {"dup": 3, "red": 3}
    dimensions = pd.read_csv(tmp_path / "out" / "dimensions.csv")
    assert json.loads(dimensions.loc[0, "top_labels"]) == [{"label": "dup", "count": 3}, {"label": "red", "count": 3}]


def test_embedding_name_too_long_rejected_before_writing(two_studies, tmp_path):
    first, _ = two_studies
    name = "n" * 250
    with pytest.raises(ValueError) as raised:
        summarize([first], tmp_path / "out", embedding_names=[name], wordcloud_size=SIZE)
    message = str(raised.value)
    assert "invalid embedding name 'nnnn" in message
    assert "word cloud files NAME_dim<d>.png" in message
    # 255 bytes minus the temporary name's ".", "_dim2", ".xxxxxxxx", ".tmp" and ".png" (23 bytes).
    assert "use at most 232 bytes" in message
    assert str(tmp_path / "out") not in message
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("edit", "problem"), [
    ("UPDATE answers SET kind = 'VISUAL' WHERE participant_id = 3 AND dimension = 1",
     "participant 3, dimension 1: kind 'VISUAL' is not one of ['visual', 'semantic', 'mixed', 'unclear']"),
    ("UPDATE answers SET interpretability = 'two' WHERE participant_id = 1 AND dimension = 0",
     "participant 1, dimension 0: interpretability 'two' is not one of ['one', 'several', 'none']"),
    ("UPDATE answers SET dimension = 7 WHERE participant_id = 2 AND dimension = 1",
     "participant 2, dimension 7: the study labels dimensions [0, 1] only"),
    ("UPDATE answers SET participant_id = 77 WHERE participant_id = 2 AND dimension = 0",
     "participant 77, dimension 0: the study has no participant 77"),
    ("DELETE FROM dimensions WHERE dimension = 1",
     "dimension 1: the study has no grid for it in its dimensions table"),
])
def test_answers_not_fitting_study_rejected(tmp_path, labeling_run, image_set, edit, problem):
    path = rate(create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="0-1"))
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA foreign_keys = OFF")
    connection.execute(edit)
    connection.commit()
    connection.close()

    with pytest.raises(ValueError) as raised:
        summarize([path], tmp_path / "out", wordcloud_size=SIZE)

    message = str(raised.value)
    assert f"the study {path} does not fit its own answers or settings" in message
    assert problem in message
    assert "correct or delete those rows" in message
    assert not (tmp_path / "out").exists()


def test_study_without_answers_summarised_with_warning(tmp_path, labeling_run, image_set, caplog):
    path = create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="0-1")
    with caplog.at_level(logging.WARNING, logger="dimalign.labeling.summary"):
        headline = summarize([path], tmp_path / "out", wordcloud_size=SIZE)
    assert f"the study {path} has no answers yet" in caplog.text
    assert "--raters" not in caplog.text
    assert headline["raters"] == {labeling_run.name: []}
    dimensions = pd.read_csv(tmp_path / "out" / "dimensions.csv")
    assert dimensions["n_answers"].tolist() == [0, 0]
    assert dimensions["resolved_kind"].tolist() == ["unresolved", "unresolved"]
    assert pd.read_csv(tmp_path / "out" / "labels.csv").empty
    assert not any((tmp_path / "out" / "wordclouds").glob("*.png"))


def test_summary_reads_one_snapshot_while_answers_arrive(tmp_path, labeling_run, image_set, monkeypatch):
    path = rate(create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="0-1"))
    read_participants = Study.participants

    def participants_then_new_answer(study):
        # A participant of a running server consents and answers right after this read.
        participants = read_participants(study)
        with Study(path) as other:
            participant, _ = other.add_participant(order_seed=9)
            other.save_answer(participant.participant_id, 0, Answer(labels=("late",), kind="visual",
                                                                     interpretability="one"))
        return participants

    monkeypatch.setattr(Study, "participants", participants_then_new_answer)
    summarize([path], tmp_path / "out", wordcloud_size=SIZE)

    dimensions = pd.read_csv(tmp_path / "out" / "dimensions.csv")
    assert dimensions["n_answers"].tolist() == [3, 3]
    assert "late" not in pd.read_csv(tmp_path / "out" / "labels.csv")["label"].tolist()


@pytest.mark.parametrize("outputs", [["summary.json"], {"files": "dimensions.csv"}, {"files": [1, None]},
                                     {"files": [], "wordclouds": {"a": 1}}])
def test_earlier_manifest_with_damaged_outputs_rejected(two_studies, tmp_path, outputs):
    first, _ = two_studies
    out = tmp_path / "out"
    summarize([first], out, wordcloud_size=SIZE)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["outputs"] = outputs
    (out / "manifest.json").write_text(json.dumps(manifest))
    # Files whose names a misread list would yield: characters of a string, str() of other values.
    for name in ("d", "1", "None"):
        (out / name).write_text("keep")

    with pytest.raises(ValueError) as raised:
        summarize([first], out, wordcloud_size=SIZE)

    message = str(raised.value)
    assert f"{out / 'manifest.json'} lists its outputs in an unexpected form" in message
    assert "choose a new output folder" in message
    for name in ("d", "1", "None"):
        assert (out / name).read_text() == "keep"
    assert json.loads((out / "manifest.json").read_text())["outputs"] == outputs


#: Labels that CSV must quote or that spreadsheet and pandas readers misread.
TRICKY_LABELS = ("a, b", 'say "hi"', "x;y", "NA", "null", "=SUM(A1)", "-5", "lab (3)", "Red", "red",
                 "\u05e9\u05dc\u05d5\u05dd", "\U0001f600", "'quoted'")


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    # The csv module keeps "NA" and "null" as text, where pandas would read NaN.
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_summary_counts_match_sqlite(tmp_path, labeling_run, image_set):
    path = create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="0-4")
    rng = random.Random(3)
    with Study(path) as study:
        for seed in range(6):
            participant, _ = study.add_participant(order_seed=seed)
            # Three raters answer every dimension; the others stop early or never start.
            answered = study.dimensions if seed < 3 else study.dimensions[: rng.randint(0, 4)]
            for dimension in answered:
                answer = validate_answer(study.questions, rng.sample(TRICKY_LABELS, rng.randint(1, 5)),
                                         rng.choice(analysis.KINDS), rng.choice(analysis.INTERPRETABILITY))
                study.save_answer(participant.participant_id, dimension, answer)
    out = tmp_path / "out"
    summarize([path], out, wordcloud_size=SIZE)

    connection = sqlite3.connect(path)
    n_answers = dict(connection.execute("SELECT dimension, COUNT(*) FROM answers GROUP BY dimension"))
    kinds = {(dimension, kind): count for dimension, kind, count in connection.execute(
        "SELECT dimension, kind, COUNT(*) FROM answers GROUP BY dimension, kind")}
    # SQLite's lower() folds ASCII only, which covers every cased letter above.
    label_counts = {(dimension, label): count for dimension, label, count in connection.execute(
        "SELECT a.dimension, lower(j.value), COUNT(DISTINCT a.participant_id) "
        "FROM answers AS a, json_each(a.labels_json) AS j GROUP BY a.dimension, lower(j.value)")}
    agreement = {field: connection.execute(
        f"SELECT COUNT(*), 100.0 * SUM(a.{field} = b.{field}) / COUNT(*) FROM answers AS a "
        "JOIN answers AS b ON a.dimension = b.dimension WHERE a.participant_id = 1 AND b.participant_id = 2"
    ).fetchone() for field in ("kind", "interpretability")}
    ratings = {(participant, dimension): kind for participant, dimension, kind in connection.execute(
        "SELECT participant_id, dimension, kind FROM answers WHERE participant_id <= 3")}
    connection.close()

    dimensions = {int(row["dimension"]): row for row in read_csv_rows(out / "dimensions.csv")}
    assert sorted(dimensions) == [0, 1, 2, 3, 4]
    for dimension, row in dimensions.items():
        assert int(row["n_answers"]) == n_answers[dimension]
        for kind in analysis.KINDS:
            assert int(row[f"n_{kind}"]) == kinds.get((dimension, kind), 0), (dimension, kind)

    labels = {(int(row["dimension"]), row["label"]): int(row["count"]) for row in read_csv_rows(out / "labels.csv")}
    assert labels == label_counts

    rows = [row for row in read_csv_rows(out / "agreement.csv") if (row["rater_a"], row["rater_b"]) == ("1", "2")]
    assert len(rows) == 2
    for row in rows:
        n, percent = agreement[row["question"]]
        assert int(row["n"]) == n == 5
        assert float(row["percent_agreement"]) == pytest.approx(percent)

    # Raters 1 and 2 decide where they agree, and rater 3 breaks their ties.
    resolved = []
    for dimension in range(5):
        a, b, c = (ratings[(rater, dimension)] for rater in (1, 2, 3))
        if a == b:
            resolved.append(a)
        elif c in (a, b):
            resolved.append(c)
        else:
            resolved.append("unresolved")
        assert dimensions[dimension]["resolved_kind"] == resolved[-1]
    shares = {row["kind"]: row for row in read_csv_rows(out / "shares.csv")}
    for kind, row in shares.items():
        assert int(row["n_dimensions"]) == resolved.count(kind)
        assert float(row["share"]) == pytest.approx(resolved.count(kind) / 5)
    assert sum(int(row["n_dimensions"]) for row in shares.values()) == 5


def test_top_labels_with_separator_exact(tmp_path, labeling_run, image_set):
    path = rate(create_study(tmp_path / "study.db", labeling_run, image_set[0], dims="0"),
                labels=("red; round (2)", "NA", "c"))
    summarize([path], tmp_path / "out", wordcloud_size=SIZE)
    dimensions = pd.read_csv(tmp_path / "out" / "dimensions.csv", keep_default_na=False, dtype=str)
    page = (tmp_path / "out" / "summary.html").read_text(encoding="utf-8")

    assert json.loads(dimensions.loc[0, "top_labels"]) == [
        {"label": "c", "count": 3}, {"label": "na", "count": 3}, {"label": "red; round (2)", "count": 3},
    ]
    assert analysis.parse_top_labels(dimensions.loc[0, "top_labels"]) == [
        ("c", 3), ("na", 3), ("red; round (2)", 3),
    ]
    assert '<span class="tag" dir="auto">red; round (2)</span> 3' in page
