"""Label and rating analyses on fixed fake ratings, with expected values worked out by hand."""

from __future__ import annotations

import json
import logging
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import cohen_kappa_score

from dimalign.labeling import analysis
from dimalign.labeling.answers import Answer
from dimalign.labeling.study import Study, create_study
from dimalign.labeling.summary import summarize

# Ten dimensions rated by three raters; C breaks the ties of A and B.
RATER_A = ["visual", "visual", "semantic", "semantic", "mixed", "unclear", "visual", "semantic", "mixed", "visual"]
RATER_B = ["visual", "semantic", "semantic", "semantic", "mixed", "visual", "visual", "semantic", "unclear", "visual"]
RATER_C = ["visual", "semantic", "semantic", "semantic", "mixed", "visual", "visual", "semantic", "semantic", "visual"]
RESOLVED = ["visual", "semantic", "semantic", "semantic", "mixed", "visual", "visual", "semantic", "unresolved",
            "visual"]

# A and B agree on dimensions 0, 2, 3, 4, 6, 7, 9: p_o = 7/10.
# Category frequencies (visual, semantic, mixed, unclear): A 4, 3, 2, 1 and B 4, 4, 1, 1 of 10, so
# p_e = (4*4 + 3*4 + 2*1 + 1*1) / 100 = 31/100 and kappa = (70 - 31) / (100 - 31) = 39/69 = 13/23.
EXPECTED_KAPPA = Fraction(13, 23)


def hand_kappa(first, second, categories):
    n = len(first)
    observed = Fraction(sum(a == b for a, b in zip(first, second)), n)
    expected = sum(Fraction(first.count(c), n) * Fraction(second.count(c), n) for c in categories)
    return (observed - expected) / (1 - expected)


def test_kappa_matches_hand_computation():
    assert hand_kappa(RATER_A, RATER_B, analysis.KINDS) == EXPECTED_KAPPA
    result = analysis.rater_agreement(RATER_A, RATER_B)
    assert result.n == 10
    assert result.percent_agreement == pytest.approx(70.0, abs=1e-12)
    assert result.kappa == pytest.approx(float(EXPECTED_KAPPA), abs=1e-12)
    assert cohen_kappa_score(RATER_A, RATER_B) == pytest.approx(float(EXPECTED_KAPPA), abs=1e-12)


def test_agreement_skips_missing_ratings():
    first = RATER_A + [None, "visual"]
    second = RATER_B + ["visual", float("nan")]
    result = analysis.rater_agreement(first, second)
    assert result.n == 10
    assert result.kappa == pytest.approx(float(EXPECTED_KAPPA), abs=1e-12)


def test_agreement_identical_raters():
    result = analysis.rater_agreement(RATER_A, RATER_A)
    assert result.percent_agreement == 100.0
    assert result.kappa == pytest.approx(1.0)
    constant = analysis.rater_agreement(["visual"] * 3, ["visual"] * 3)
    assert constant.percent_agreement == 100.0
    assert np.isnan(constant.kappa)


def test_agreement_rejects_unknown_rating():
    with pytest.raises(ValueError, match="colourful"):
        analysis.rater_agreement(["colourful"], ["visual"])
    with pytest.raises(ValueError, match="1 ratings but rater B 0"):
        analysis.rater_agreement(["visual"], [])


def test_resolve_with_and_without_tie_breaker():
    assert analysis.resolve_ratings(RATER_A, RATER_B, RATER_C) == RESOLVED
    without = analysis.resolve_ratings(RATER_A, RATER_B)
    assert without == [a if a == b else "unresolved" for a, b in zip(RATER_A, RATER_B)]
    assert analysis.resolve_ratings(["visual"], [None], ["visual"]) == ["visual"]
    assert analysis.resolve_ratings([None], [None]) == ["unresolved"]


def test_kind_shares_exact():
    shares = analysis.kind_shares({"dnn": RESOLVED, "human": ["semantic", "semantic", "visual", "mixed"]})
    dnn = shares[shares["embedding"] == "dnn"].set_index("kind")
    assert dnn["n_dimensions"].to_dict() == {"visual": 4, "semantic": 4, "mixed": 1, "unclear": 0, "unresolved": 1}
    assert dnn["share"].to_dict() == {"visual": 0.4, "semantic": 0.4, "mixed": 0.1, "unclear": 0.0,
                                      "unresolved": 0.1}
    human = shares[shares["embedding"] == "human"].set_index("kind")
    assert human["share"].to_dict() == {"visual": 0.25, "semantic": 0.5, "mixed": 0.25, "unclear": 0.0}


def test_relevance_shares_exact():
    kinds = dict(enumerate(RESOLVED))
    # Triplets driven by dimensions 0, 0 (visual), 1, 2 (semantic), 4 (mixed), 8, 8 (unresolved), 11 (not rated).
    shares = analysis.relevance_shares([0, 0, 1, 2, 4, 8, 8, 11], kinds).set_index("kind")
    assert shares["n_triplets"].to_dict() == {"visual": 2, "semantic": 2, "mixed": 1, "unclear": 0,
                                              "not rated": 1, "unresolved": 2}
    assert shares["share"].to_dict() == {"visual": 0.25, "semantic": 0.25, "mixed": 0.125, "unclear": 0.0,
                                         "not rated": 0.125, "unresolved": 0.25}


def test_relevance_shares_leave_out_triplets_without_a_dimension():
    # compare marks a triplet whose largest drop several dimensions share
    # with -1; it belongs to no kind and is not "not rated".
    shares = analysis.relevance_shares([0, -1, 1, -1], {0: "visual", 1: "semantic"}).set_index("kind")
    assert shares["n_triplets"].to_dict() == {"visual": 1, "semantic": 1, "mixed": 0, "unclear": 0}
    assert shares["share"].to_dict() == {"visual": 0.5, "semantic": 0.5, "mixed": 0.0, "unclear": 0.0}


def test_read_relevance_checks_columns(tmp_path):
    path = tmp_path / "relevance.csv"
    path.write_text("triplet_index,most_relevant_dim,delta\n0,3,0.5\n1,1,0.1\n")
    table = analysis.read_relevance(path)
    assert table["most_relevant_dim"].tolist() == [3, 1]
    assert "delta" in table.columns
    path.write_text("triplet,dim\n0,3\n")
    with pytest.raises(ValueError, match=r"lacks the columns \['triplet_index', 'most_relevant_dim'\]"):
        analysis.read_relevance(path)
    path.write_text("triplet_index,most_relevant_dim\n0,3\n1,-1\n2,x\n")
    with pytest.raises(ValueError, match=r"lines \[3, 4\] \(values '-1', 'x'\)"):
        analysis.read_relevance(path)


def test_label_frequencies_normalised():
    counts = analysis.label_frequencies(["Red", " red ", "RED  fruit", "red fruit", "", "  "])
    assert counts == {"red": 2, "red fruit": 2}
    assert analysis.top_labels(counts, n=1) == [("red", 2)]


def test_human_semantic_score():
    assert analysis.human_semantic_score(["visual", "semantic", "mixed", "unclear"]) == 0.5
    assert np.isnan(analysis.human_semantic_score(["unclear"]))


def test_word_cloud_reproducible(tmp_path):
    frequencies = {"animals": 5, "pets": 2, "wild animals": 1}
    first = analysis.write_word_cloud(frequencies, tmp_path / "a.png", width=200, height=100, random_state=3)
    second = analysis.write_word_cloud(frequencies, tmp_path / "b.png", width=200, height=100, random_state=3)
    with Image.open(first) as image_a, Image.open(second) as image_b:
        assert image_a.size == (200, 100)
        assert np.array_equal(np.asarray(image_a), np.asarray(image_b))
        assert np.asarray(image_a).min() < 128
    with pytest.raises(ValueError, match="no labels"):
        analysis.write_word_cloud({}, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


@pytest.fixture
def rated_study(tmp_path, labeling_run, image_set):
    path = create_study(tmp_path / "rated.db", labeling_run, image_set[0], dims="0-9")
    interpretability = {"visual": "one", "semantic": "one", "mixed": "several", "unclear": "none"}
    with Study(path) as study:
        for rater, ratings in enumerate((RATER_A, RATER_B, RATER_C)):
            participant, _ = study.add_participant(order_seed=rater)
            for dimension, kind in enumerate(ratings):
                labels = (f"Label {dimension}", "shared") if rater < 2 else (f"label {dimension}",)
                study.save_answer(participant.participant_id, dimension,
                                  Answer(labels=labels, kind=kind, interpretability=interpretability[kind]))
        # A fourth participant who stopped early is not a default rater.
        participant, _ = study.add_participant(order_seed=9)
        study.save_answer(participant.participant_id, 0, Answer(labels=("x",), kind="visual", interpretability="one"))
    return path


def test_summarize_study_exact(rated_study, tmp_path):
    relevance = tmp_path / "relevance.csv"
    pd.DataFrame({"triplet_index": range(8), "most_relevant_dim": [0, 0, 1, 2, 4, 8, 8, 11]}).to_csv(
        relevance, index=False
    )
    out = tmp_path / "summary"
    headline = summarize([rated_study], out, relevance=[relevance], wordcloud_size=(200, 100))
    name = headline["embeddings"][0]
    assert headline["raters"] == {name: [1, 2, 3]}

    agreement = pd.read_csv(out / "agreement.csv")
    kind_ab = agreement[(agreement["question"] == "kind") & (agreement["rater_a"] == 1) & (agreement["rater_b"] == 2)]
    assert kind_ab["percent_agreement"].item() == pytest.approx(70.0)
    assert kind_ab["kappa"].item() == pytest.approx(float(EXPECTED_KAPPA))
    assert len(agreement) == 6

    dimensions = pd.read_csv(out / "dimensions.csv").set_index("dimension")
    assert dimensions["resolved_kind"].tolist() == RESOLVED
    assert dimensions.loc[0, "n_answers"] == 4
    assert json.loads(dimensions.loc[3, "top_labels"]) == [
        {"label": "label 3", "count": 3}, {"label": "shared", "count": 2},
    ]
    assert dimensions.loc[4, "resolved_interpretability"] == "several"

    shares = pd.read_csv(out / "shares.csv").set_index("kind")
    assert shares["share"].to_dict() == {"visual": 0.4, "semantic": 0.4, "mixed": 0.1, "unclear": 0.0,
                                         "unresolved": 0.1}
    relevance_shares = pd.read_csv(out / "relevance_shares.csv").set_index("kind")
    assert relevance_shares.loc["visual", "share"] == 0.25
    assert relevance_shares.loc["not rated", "n_triplets"] == 1

    assert len(list((out / "wordclouds").glob("*.png"))) == 10
    assert json.loads((out / "summary.json").read_text())["shares"][name]["visual"] == 0.4
    assert json.loads((out / "manifest.json").read_text())["step"] == "labels summarize"
    html = (out / "summary.html").read_text()
    assert "wordclouds/" in html


def test_summarize_with_named_raters(rated_study, tmp_path):
    headline = summarize([rated_study], tmp_path / "out", raters=[2, 1], wordcloud_size=(200, 100))
    assert list(headline["raters"].values()) == [[2, 1]]
    with pytest.raises(ValueError, match="two or three distinct participant ids"):
        summarize([rated_study], tmp_path / "bad", raters=[1, 77])


def test_named_raters_with_missing_ratings_warned(rated_study, tmp_path, caplog):
    # Participant 4 answered 1 of the 10 dimensions, so its agreement with
    # rater 1 rests on one dimension and 9 dimensions stay unresolved.
    with caplog.at_level(logging.WARNING, logger="dimalign.labeling.summary"):
        headline = summarize([rated_study], tmp_path / "out", raters=[1, 4], wordcloud_size=(200, 100))
    assert list(headline["raters"].values()) == [[1, 4]]
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "rater 4 rated 1 of the 10 dimensions" in warnings[0]
    assert "rater 1" not in warnings[0]


def test_summarize_relevance_count_checked(rated_study, tmp_path):
    with pytest.raises(ValueError, match="one --relevance per study"):
        summarize([rated_study], tmp_path / "out", relevance=[tmp_path / "a.csv", tmp_path / "b.csv"])


def test_nfc_and_nfd_labels_counted_once():
    frequencies = analysis.label_frequencies(["caf\u00e9", "Cafe\u0301", "tea"])
    assert frequencies == {"caf\u00e9": 2, "tea": 1}


def test_read_relevance_accepts_byte_order_mark(tmp_path):
    """Spreadsheet programs start UTF-8 CSV files with a byte-order mark."""
    path = tmp_path / "relevance.csv"
    path.write_bytes(b"\xef\xbb\xbftriplet_index,most_relevant_dim\n0,1\n1,2\n")
    relevance = analysis.read_relevance(path, n_dims=6)
    assert list(relevance["most_relevant_dim"]) == [1, 2]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"triplet_index,most_relevant_dim\n", "has a header but no rows"),
        (b"triplet_index,most_relevant_dim\n0,1\n\xff,2\n", r"is not UTF-8 text \(byte 0xff at offset 36\)"),
        (b"triplet_index,most_relevant_dim\n0,1\n1,99999999999999999999999\n",
         r"column most_relevant_dim: lines \[3\] \(values '99999999999999999999999'\) are not non-negative"),
        (b"triplet_index,most_relevant_dim\n0,1\n1,40\n2,5\n3,6\n",
         r"column most_relevant_dim: lines \[3, 5\] \(values '40', '6'\) are not dimensions of the embedding, "
         r"which has 6 \(0 to 5\)"),
        (b"triplet_index,most_relevant_dim\n4,1\n5,2\n4,3\n",
         r"column triplet_index: lines \[2, 4\] \(values '4', '4'\) repeat a triplet"),
        # Line numbers count as in the file, blank lines included.
        (b"triplet_index,most_relevant_dim\n10,0,1\n11,1,1\n",
         r" has rows whose field count differs from the header's 2 \(line 2 has 3, line 3 has 3\)"),
        (b"triplet_index,most_relevant_dim\n0,1\n2\n",
         r" has rows whose field count differs from the header's 2 \(line 3 has 1\)"),
        (b"triplet_index,most_relevant_dim\n0,1\n\n1,x\n",
         r", column most_relevant_dim: lines \[4\] \(values 'x'\) are not non-negative"),
        (b"\ntriplet_index,most_relevant_dim\n0,1\n\n\n1,x\n",
         r", column most_relevant_dim: lines \[6\] \(values 'x'\) are not non-negative"),
    ],
)
def test_read_relevance_rejects_bad_file(tmp_path, content, message):
    path = tmp_path / "relevance.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"relevance file {path}.*{message}"):
        analysis.read_relevance(path, n_dims=6)


def test_relevance_missing_or_folder_named(tmp_path):
    missing = tmp_path / "missing.csv"
    with pytest.raises(FileNotFoundError, match=f"relevance file {missing} not found: check the --relevance path"):
        analysis.read_relevance(missing)
    with pytest.raises(IsADirectoryError, match=f"relevance file {tmp_path} is a folder: give the --relevance CSV"):
        analysis.read_relevance(tmp_path)


def test_label_counted_once_per_answer():
    counts = analysis.answer_label_counts([["dup"] * 5, ["Red", "red", "round"], ["red"], ["", " "]])
    assert counts == {"dup": 1, "red": 2, "round": 1}


@pytest.mark.parametrize(
    "label", ["\u200bred", "\ufeffred", "re\u00add", "r\u2060ed", "red\u200b ", "\u200b red"]
)
def test_format_characters_removed_from_labels(label):
    # Zero-width space, byte order mark, soft hyphen and word joiner draw
    # nothing, so a label with them looks the same as one without.
    assert analysis.normalize_label(label) == "red"
    assert analysis.label_frequencies(["red", label]) == {"red": 2}


def test_label_composed_after_format_removal():
    # A soft hyphen between "e" and a combining acute accent keeps NFC from
    # composing them, so the label must be composed again after removing it.
    assert analysis.normalize_label("Cafe\u00ad\u0301") == "caf\u00e9"
    assert analysis.answer_label_counts([["caf\u00e9"], ["cafe\u00ad\u0301"]]) == {"caf\u00e9": 2}


def test_word_cloud_draws_more_than_200_labels(tmp_path, caplog):
    # wordcloud draws at most max_words labels, 200 by default.
    frequencies = {f"w{number}": 1 for number in range(250)}
    with caplog.at_level("WARNING", logger="dimalign.labeling.analysis"):
        analysis.write_word_cloud(frequencies, tmp_path / "many.png", width=800, height=600)
    assert "not drawn" not in caplog.text


def test_word_cloud_warns_about_labels_not_drawn(tmp_path, caplog):
    frequencies = {"red": 3, "round": 1, "x" * 300: 1}
    with caplog.at_level("WARNING", logger="dimalign.labeling.analysis"):
        analysis.write_word_cloud(frequencies, tmp_path / "long.png", width=120, height=60, context="dimension 4")
    assert "dimension 4: 1 of 3 labels did not fit and are not drawn" in caplog.text
    assert "'xxxxxxxx" in caplog.text
    assert "labels.csv lists every label" in caplog.text


def test_top_labels_json_round_trip():
    counts = [("a; b (2)", 3), ("\"quoted\"", 2), ("caf\u00e9", 1)]
    text = analysis.format_top_labels(counts)

    assert text == '[{"label": "a; b (2)", "count": 3}, {"label": "\\"quoted\\"", "count": 2}, ' \
        '{"label": "caf\u00e9", "count": 1}]'
    assert analysis.parse_top_labels(text) == counts
    assert analysis.parse_top_labels("[]") == []
    assert analysis.format_top_labels([]) == "[]"


@pytest.mark.parametrize("text", ["red (3); round (2)", "[x] (2)", ""])
def test_older_top_labels_text_not_parsed(text):
    assert analysis.parse_top_labels(text) is None
    assert analysis.describe_top_labels(text) == text


def test_top_labels_display_text():
    text = analysis.format_top_labels([("red", 3), ("a; b", 2)])
    assert analysis.describe_top_labels(text) == "red (3); a; b (2)"


@pytest.mark.parametrize(
    "text", ['[{"label": "red"}]', '["red", 3]', '[{"label": "red", "count": "3"}]', "[not json]",
             '[{"label": "red", "count": true}]'],
)
def test_invalid_top_labels_rejected(text):
    with pytest.raises(ValueError, match="invalid top_labels value"):
        analysis.parse_top_labels(text)
