"""Automatic semantic check: names of THINGS animals cluster, random objects do not."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from dimalign.cli import main
from dimalign.labeling import semantic
from dimalign.labeling.answers import Answer
from dimalign.labeling.study import Study, create_study
from dimalign.labeling.summary import summarize


@pytest.fixture(scope="module")
def sentence_model():
    return semantic.load_sentence_model()


@pytest.fixture(scope="module")
def things_objects(shared_data):
    """200 THINGS concepts (20 animals, 180 others) with their names and animal flags."""
    ids = (shared_data / "things" / "unique_id.txt").read_text().split()
    # category_mat_manual.tsv rows follow unique_id.txt; words.csv has its own order, joined by id.
    animal = pd.read_csv(shared_data / "things" / "category_mat_manual.tsv", sep="\t")["animal"].to_numpy() == 1
    names = semantic.read_object_names(shared_data / "things" / "words.csv", ids)
    rng = np.random.default_rng(0)
    chosen = np.concatenate([
        rng.choice(np.flatnonzero(animal), 20, replace=False),
        rng.choice(np.flatnonzero(~animal), 180, replace=False),
    ])
    return [names[index] for index in chosen], animal[chosen]


def test_model_bundled_offline():
    path = semantic.model_path()
    assert (path / "model.safetensors").is_file()


def test_animal_dimension_scores_above_random(sentence_model, things_objects):
    names, is_animal = things_objects
    rng = np.random.default_rng(1)
    tops = {
        0: rng.choice(np.flatnonzero(is_animal), 10, replace=False),
        1: rng.choice(len(names), 10, replace=False),
    }
    scores = semantic.semantic_scores(
        tops, names, labels={0: [["animals"]], 1: [["animals"]]}, k=10, n_random=300, model=sentence_model
    ).set_index("dimension")
    assert scores.loc[0, "semantic_z"] > scores.loc[1, "semantic_z"]
    assert scores.loc[0, "semantic_z"] > 2.0
    assert scores.loc[0, "label_similarity"] > scores.loc[1, "label_similarity"]
    assert scores.loc[0, "random_mean"] == scores.loc[1, "random_mean"]


class HashModel:
    """A stand-in sentence model: a fixed random unit vector per text."""

    def encode(self, texts, **options):
        vectors = np.stack([np.random.default_rng(sum(map(ord, text))).normal(size=8) for text in texts])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_scores_reproducible_with_seed():
    names = [f"object {number}" for number in range(40)]
    tops = {0: list(range(10)), 1: list(range(10, 20))}
    first = semantic.semantic_scores(tops, names, k=5, n_random=50, random_state=3, model=HashModel())
    second = semantic.semantic_scores(tops, names, k=5, n_random=50, random_state=3, model=HashModel())
    pd.testing.assert_frame_equal(first, second)
    other_seed = semantic.semantic_scores(tops, names, k=5, n_random=50, random_state=4, model=HashModel())
    assert other_seed.loc[0, "random_mean"] != first.loc[0, "random_mean"]


def test_mean_pairwise_cosine_matches_loop():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 4))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs = [vectors[i] @ vectors[j] for i in range(6) for j in range(i + 1, 6)]
    assert semantic._mean_pairwise_cosine(vectors) == pytest.approx(np.mean(pairs))


def test_invalid_settings_rejected():
    with pytest.raises(ValueError, match="at least 2"):
        semantic.semantic_scores({0: [0, 1]}, ["a", "b"], k=1, model=object())
    with pytest.raises(ValueError, match="only 2 objects"):
        semantic.semantic_scores({0: [0, 1]}, ["a", "b"], k=3, model=object())


def test_object_name_cleaning():
    assert semantic.object_name("bat2") == "bat"
    assert semantic.object_name("ice_cream") == "ice cream"
    assert semantic.object_name("aardvark/aardvark_01b.jpg") == "aardvark"
    assert semantic.object_name("st._bernard") == "st. bernard"


def test_plain_name_list_length_checked(tmp_path):
    (tmp_path / "names.txt").write_text("dog\ncat\n")
    assert semantic.read_object_names(tmp_path / "names.txt", ["a", "b"]) == ["dog", "cat"]
    with pytest.raises(ValueError, match="2 names but the embedding has 3 objects"):
        semantic.read_object_names(tmp_path / "names.txt", ["a", "b", "c"])


def test_rating_correlation_reports_n():
    result = semantic.rating_correlation([0.1, 0.5, 0.9, np.nan, 2.0], [0.0, 0.5, 1.0, 1.0, np.nan])
    assert result["n"] == 3
    assert result["rho"] == pytest.approx(1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = semantic.rating_correlation([0.1, 0.2], [0.0, 1.0])
    assert small["n"] == 2
    assert np.isnan(small["rho"])
    assert any("undefined" in str(warning.message) for warning in caught)


def test_summarize_adds_semantic_scores(tmp_path, labeling_run, image_set, sentence_model):
    # Names of the image set's objects: the photo's subject, whatever the variant.
    _, image_names = image_set
    subjects = {"grace_hopper": "woman", "hot_dog": "hot dog", "chelsea": "cat", "astronaut": "astronaut"}
    names = [subjects.get(name.split("/")[1][:-4], name.split("/")[1][:-4]) for name in image_names]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    study_path = create_study(tmp_path / "s.db", labeling_run, image_set[0], dims="0-3")
    with Study(study_path) as study:
        for rater, kinds in enumerate([("semantic", "visual", "visual", "mixed"),
                                        ("semantic", "visual", "mixed", "visual")]):
            participant, _ = study.add_participant(order_seed=rater)
            for dimension, kind in enumerate(kinds):
                study.save_answer(participant.participant_id, dimension,
                                  Answer(labels=("animals",), kind=kind, interpretability="one"))

    out = tmp_path / "out"
    headline = summarize([study_path], out, semantic=True, object_names=tmp_path / "names.txt", semantic_k=6,
                         n_random=200, wordcloud_size=(200, 100), sentence_model=sentence_model)
    table = pd.read_csv(out / "semantic.csv").set_index("dimension")
    assert table["semantic_z"].idxmax() == 0
    assert table.loc[0, "human_semantic_score"] == 1.0
    assert table.loc[2, "human_semantic_score"] == 0.25
    correlation = headline["semantic_correlation"][0]
    assert correlation["n"] == 4
    assert -1.0 <= correlation["rho"] <= 1.0
    assert "semantic_z" in pd.read_csv(out / "dimensions.csv").columns


def test_collapsed_object_names_rejected():
    names = [semantic.object_name(f"obj{number}") for number in range(60)]
    with pytest.raises(ValueError) as raised:
        semantic.check_object_names(names, k=10, source="derived from the object ids")
    message = str(raised.value)
    assert "60 objects have 1 distinct name" in message
    assert "'obj' (60 objects)" in message
    assert "--object-names" in message


def test_shared_object_names_warned(caplog):
    names = ["image"] * 5 + [f"name {number}" for number in range(15)]
    with caplog.at_level(logging.WARNING, logger="dimalign.labeling.semantic"):
        semantic.check_object_names(names, k=10, source="derived from the object ids")
    assert "5 of 20 objects share their name with another object" in caplog.text
    assert "'image' (5 objects)" in caplog.text


def test_summarize_rejects_collapsed_names_before_writing(tmp_path, study_path):
    (tmp_path / "names.txt").write_text("image\n" * 36)
    with pytest.raises(ValueError, match="36 objects have 1 distinct name"):
        summarize([study_path], tmp_path / "out", semantic=True, object_names=tmp_path / "names.txt",
                  sentence_model=object())
    assert not (tmp_path / "out").exists()


def test_rating_correlation_names_missing_scores():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = semantic.rating_correlation([np.nan] * 4, [0.0, 0.5, 1.0, 1.0])
    assert result["n"] == 0
    message = " ".join(str(warning.message) for warning in caught)
    assert "0 of 4 dimensions have an automatic score and 4 a human rating" in message


def test_object_names_with_byte_order_mark(tmp_path):
    words = tmp_path / "words.csv"
    words.write_bytes("\ufeffid,word\nbat2,baseball bat\ndog,dog\n".encode())
    assert semantic.read_object_names(words, ["bat2", "dog"]) == ["baseball bat", "dog"]
    plain = tmp_path / "names.txt"
    plain.write_bytes("\ufeffbat\ndog\n".encode())
    assert semantic.read_object_names(plain, ["a", "b"]) == ["bat", "dog"]


def test_n_random_capped(tmp_path, study_path, capsys):
    too_many = semantic.MAX_N_RANDOM + 1
    with pytest.raises(ValueError, match=f"n_random={too_many}"):
        semantic.semantic_scores({0: list(range(10))}, [f"o{i}" for i in range(20)], n_random=too_many,
                                 model=object())
    with pytest.raises(ValueError, match=f"invalid --n-random {too_many}: use at most {semantic.MAX_N_RANDOM}"):
        summarize([study_path], tmp_path / "out", semantic=True, n_random=too_many, sentence_model=object())
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        main(["labels", "summarize", str(study_path), "-o", str(tmp_path / "out"), "--semantic",
              "--n-random", str(too_many)])
    assert f"use at most {semantic.MAX_N_RANDOM}" in capsys.readouterr().err


def test_baseline_computed_in_chunks_matches_whole():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    subsets = np.stack([rng.choice(30, size=5, replace=False) for _ in range(25)])
    whole = semantic._mean_pairwise_cosine(vectors[subsets])
    chunked = semantic._subset_coherence(vectors, subsets, chunk_size=4)
    np.testing.assert_allclose(chunked, whole)


def test_n_random_help_states_cap(capsys):
    with pytest.raises(SystemExit):
        main(["labels", "summarize", "--help"])
    assert f"2 to {semantic.MAX_N_RANDOM}" in " ".join(capsys.readouterr().out.split())


def test_label_similarity_counts_label_once_per_answer():
    names = [f"object {number}" for number in range(12)]
    tops = {0: list(range(5))}
    model = HashModel()
    answers = [["red", "red", " Red "], ["red", "round"], ["round\u200b"]]
    scores = semantic.semantic_scores(tops, names, labels={0: answers}, k=5, n_random=10, model=model)

    # 'red' was given by two answers and 'round' by two, each counted once per answer.
    top_vectors = model.encode(names[:5])
    label_vectors = model.encode(["red", "round"])
    per_label = (label_vectors @ top_vectors.T).mean(axis=1)
    expected = (2 * per_label[0] + 2 * per_label[1]) / 4
    assert scores.loc[0, "label_similarity"] == pytest.approx(expected)


def test_label_similarity_rejects_flat_labels():
    names = [f"object {number}" for number in range(12)]
    with pytest.raises(TypeError, match="dimension 0.*'red'.*list of each answer's labels"):
        semantic.semantic_scores({0: list(range(5))}, names, labels={0: ["red"]}, k=5, n_random=10,
                                 model=HashModel())


def test_object_names_conflicting_ids_rejected(tmp_path):
    words = tmp_path / "words.csv"
    words.write_text("id,word\ncat_0,cat\ndog_1,dog\ncat_0,lion\ndog_1,dog\n")
    with pytest.raises(ValueError) as raised:
        semantic.read_object_names(words, ["cat_0", "dog_1"])
    message = str(raised.value)
    assert f"object names file {words} gives the id 'cat_0' two names" in message
    assert "'cat' on line 2 and 'lion' on line 4" in message
    assert "dog_1" not in message


@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\x1c", "\x0c"])
def test_object_names_split_only_at_line_feeds(tmp_path, separator):
    # U+0085 is what a Latin-1 decode makes of the ellipsis byte of Windows-1252.
    plain = tmp_path / "names.txt"
    plain.write_text(f"bat\ndog{separator}house\ncat\n", encoding="utf-8")
    with pytest.raises(ValueError) as raised:
        semantic.read_object_names(plain, ["a", "b", "c"])
    message = str(raised.value)
    name = f"dog{separator}house"
    assert f"object names file {plain}, line 2: the name {name!r} contains the control or separator " \
           f"character U+{ord(separator):04X}" in message

    words = tmp_path / "words.csv"
    words.write_text(f"id,word\na,bat\nb,\"dog{separator}house\"\n", encoding="utf-8")
    with pytest.raises(ValueError) as raised:
        semantic.read_object_names(words, ["a", "b"])
    assert f"object names file {words}, line 3" in str(raised.value)
