"""The HTML report: self-contained, escaped, with the summary numbers and the browser's data."""

from __future__ import annotations

import base64
import html
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from dimalign.cli import main
from dimalign.report.html import render_document, script_json, summary_rows, write_report
from dimalign.report.results import StudyResults

pytestmark = pytest.mark.filterwarnings("ignore:the chosen ridge penalty")


@pytest.fixture(scope="module")
def report(tiny_study, tiny_labels, tmp_path_factory):
    """The tiny study's report with categories, labels and images."""
    data = tiny_study.parent / "data"
    results = StudyResults(
        tiny_study, categories=data / "categories.tsv", labels=tiny_labels, images=data / "images",
    )
    out = tmp_path_factory.mktemp("report") / "report.html"
    written = write_report(results, out, title="Tiny <study> & co", top_k=4, n_disagreements=3)
    return written, out.read_text(encoding="utf-8"), results


def browser_data(document: str) -> list[dict]:
    match = re.search(r'<script type="application/json" id="dimension-data">(.*?)</script>', document, re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_report_draws_every_figure(report):
    written, document, _ = report
    assert written.figures == ["similarity_matrices", "matching", "training_curves", "kind_shares", "disagreements"]
    assert written.skipped == {}
    for stem in written.figures:
        assert f'id="figure-{stem}"' in document
    assert document.count('<img src="data:image/png;base64,') == len(written.figures)


def test_kind_caption_names_every_kind(report):
    # labels summarize rates each dimension visual, semantic, mixed or unclear,
    # and the figure draws a bar for each kind it finds.
    from dimalign.labeling.analysis import KINDS

    _, document, _ = report
    caption = document.split('id="figure-kind_shares"', 1)[1].split("</figcaption>", 1)[0]
    for kind in KINDS:
        assert kind in caption


def test_training_caption_explains_other_accuracy(report):
    # A VICE fit scores its held-out triplets with the posterior predictive
    # (choice probabilities averaged over samples), while evaluate scores the
    # pruned posterior mean, so the curve's last point and the table differ.
    import pandas as pd

    _, document, results = report
    history = pd.read_csv(results.study_dir / "human_fit" / "history.csv")
    evaluation = json.loads((results.study_dir / "evaluate" / "summary.json").read_text())
    assert history["val_accuracy"].iloc[-1] != pytest.approx(evaluation["human"]["accuracy"])
    caption = document.split('id="figure-training_curves"', 1)[1].split("</figcaption>", 1)[0]
    assert "averaged over posterior samples" in caption
    assert "summary table" in caption


def test_report_requests_nothing(report):
    _, document, _ = report
    assert "Content-Security-Policy" in document
    assert "default-src 'none'; img-src data:" in document
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', document)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "<link" not in document
    assert "@import" not in document
    assert "url(" not in document


class _StructureParser(HTMLParser):
    """Record unclosed and misnested elements, element ids and the attributes of every element."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.misnested: list[tuple[str, list[str]]] = []
        self.elements: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if self.open and self.open[-1] == tag:
            self.open.pop()
        else:
            self.misnested.append((tag, list(self.open)))


def test_report_structure_is_valid(report):
    _, document, _ = report
    parser = _StructureParser()
    parser.feed(document)
    parser.close()
    assert parser.misnested == []
    assert parser.open == []
    ids = [attributes["id"] for _, attributes in parser.elements if "id" in attributes]
    assert len(ids) == len(set(ids))
    # Every label points at an element that exists.
    targets = [attributes["for"] for tag, attributes in parser.elements if tag == "label"]
    assert targets and all(target in ids for target in targets)
    images = [attributes for tag, attributes in parser.elements if tag == "img"]
    assert images and all(image.get("alt") for image in images)
    # An img requires src, the browser's included, before its script runs.
    assert [image.get("id") for image in images if "src" not in image] == []
    assert all(image["src"].startswith("data:image/png;base64,") for image in images)
    assert not [attributes for _, attributes in parser.elements if "href" in attributes]


def test_browser_shows_first_dimension_without_script(report):
    written, document, _ = report
    first = browser_data(document)[0]
    parser = _StructureParser()
    parser.feed(document)
    parser.close()
    figure = next(attributes for tag, attributes in parser.elements if attributes.get("id") == "dimension-figure")
    png = (written.path.parent / "report_figures" / "dimension_human_000.png").read_bytes()
    assert figure["src"] == "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    assert figure["alt"] == f"Top objects of {first['title']}"
    panel = document.split('<article id="dimension-panel">', 1)[1].split("</article>", 1)[0]
    assert f'<h3 id="dimension-title">{html.escape(first["title"])}</h3>' in panel
    assert f'<dd id="dimension-labels">{html.escape(first["labels"])} (visual)</dd>' in panel
    assert f'<dd id="dimension-match">{html.escape(first["match"])}</dd>' in panel
    first_object = first["top_objects"][0]
    assert f'<li>{html.escape(first_object["name"])} ({first_object["weight"]:.3f})</li>' in panel


def test_each_dimension_figure_embedded_once(report):
    written, document, results = report
    figures_dir = written.path.parent / "report_figures"
    for side in ("human", "dnn"):
        for dim in range(results.embedding(side).shape[1]):
            encoded = base64.b64encode((figures_dir / f"dimension_{side}_{dim:03d}.png").read_bytes()).decode("ascii")
            assert document.count(encoded) == 1, f"{side} dimension {dim}"


def test_report_escapes_title(report):
    _, document, _ = report
    assert "<title>Tiny &lt;study&gt; &amp; co</title>" in document
    assert "<h1>Tiny &lt;study&gt; &amp; co</h1>" in document


def test_document_escapes_study_text(report):
    _, _, results = report
    entry = {
        "id": "human-0", "side": "human", "dim": 0, "title": "<i>odd & co", "figure": "data:image/png;base64,",
        "top_objects": [{"name": "<i>odd & co", "weight": 1.0}], "labels": "<i>odd & co", "kind": None,
        "match": None, "relevance": None, "ridge_cv_r2": None,
    }
    document = render_document(
        title="t", results=results, figure_sections=[], skipped={"x<y": "a & </p>"}, dimensions=[entry],
    )
    assert "<i>odd" not in document
    assert '<option value="human-0">human dimension 0: &lt;i&gt;odd &amp; co</option>' in document
    assert "<strong>x&lt;y</strong>: a &amp; &lt;/p&gt;" in document
    assert browser_data(document)[0]["top_objects"][0]["name"] == "<i>odd & co"


def test_browser_data_covers_every_dimension(report):
    written, document, results = report
    data = browser_data(document)
    expected = [f"{side}-{dim}" for side in ("human", "dnn") for dim in range(results.embedding(side).shape[1])]
    assert [entry["id"] for entry in data] == expected
    assert written.n_dimensions == len(expected)
    first = data[0]
    # The panel's img contains the first figure (see test_browser_shows_first_dimension_without_script).
    assert first["figure"] is None
    assert all(entry["figure"].startswith("data:image/png;base64,") for entry in data[1:])
    assert len(first["top_objects"]) == 4
    assert first["labels"] == "label 0 (2); round </script> (1)"
    assert first["kind"] == "visual"
    match = results.best_match("human", 0)
    assert first["match"].startswith(f"DNN dimension {match['other_dim']} (r = {match['r']:.3f}")
    assert first["relevance"].startswith("mean drop in choice probability")
    # The data block holds no raw "</script>" although a label contains one.
    block = document.split('id="dimension-data">', 1)[1].split("</script>", 1)[0]
    assert "</" not in block
    assert len(re.findall(r'<option value="', document)) == len(expected)


def test_browser_relevance_names_triplet_count(report):
    # compare.relevance_triplets may explain only the first held-out triplets,
    # so the share names how many it counts.
    import pandas as pd

    _, document, results = report
    n_triplets = json.loads((results.study_dir / "compare" / "relevance_summary.json").read_text())["n_triplets"]
    data = {entry["id"]: entry for entry in browser_data(document)}
    for side in ("human", "dnn"):
        table = pd.read_csv(results.study_dir / "compare" / f"relevance_{side}.csv")
        for row in table.itertuples():
            assert data[f"{side}-{row.dim}"]["relevance"] == (
                f"mean drop in choice probability {row.mean_drop:.4f}; most relevant dimension in "
                f"{100 * row.share_most_relevant:.1f}% of {n_triplets:,} held-out human triplets"
            )


def test_summary_table_shows_saved_numbers(report):
    _, document, results = report
    evaluation = json.loads((results.study_dir / "evaluate" / "summary.json").read_text())
    rsa = json.loads((results.study_dir / "compare" / "rsa.json").read_text())
    expected_rows = [
        ("Held-out odd-one-out accuracy", f"{evaluation['human']['accuracy']:.3f}", f"{evaluation['dnn']['accuracy']:.3f}"),
        ("Noise ceiling", "1.000 (20 responses in 10 repeated sets, too few to compare with accuracies)", "n/a (no triplet judged twice)"),
        ("Human-DNN RSA (Pearson r)", f"{rsa['r']:.3f} [95% CI {rsa['ci_low']:.3f}, {rsa['ci_high']:.3f}]", ""),
    ]
    for name, human, dnn in expected_rows:
        row = f"<tr><th scope=\"row\">{html.escape(name)}</th><td>{html.escape(human)}</td><td>{html.escape(dnn)}</td></tr>"
        assert row in document


def test_summary_names_scored_triplets(report):
    """The summary names the triplets that each held-out accuracy scores, because the two sides differ."""
    _, document, _ = report
    summary = document.split('<section id="summary">', 1)[1].split("</section>", 1)[0]
    assert (
        "<p class=\"meta\">Each fit is scored on its own held-out triplets: human judgements for the "
        "human embedding, choices simulated from the DNN features for the DNN embedding. So the two "
        "held-out accuracies are not comparable, and the row of the DNN embedding on held-out human "
        "triplets compares the DNN with humans. Accuracies score the weights in embedding.npz, "
        "which are the posterior means for a VICE fit. Chance is 1/3.</p>"
    ) in summary
    # A study may fit SPoSE, which has no posterior.
    assert "Accuracies score the posterior means" not in document


def test_summary_rows_mark_missing_values():
    rows = dict((name, (human, dnn)) for name, human, dnn in summary_rows({"human_n_dims": 12}))
    assert rows["Dimensions kept"] == ("12", "n/a")
    assert rows["Held-out odd-one-out accuracy"] == ("n/a", "n/a")
    assert rows["Noise ceiling"] == ("n/a", "n/a")
    assert "Human-DNN RSA (Pearson r)" not in rows

    rows = dict((name, (human, dnn)) for name, human, dnn in summary_rows({"dnn_n_triplets": 160}))
    assert rows["Noise ceiling"] == ("n/a", "n/a (no triplet judged twice)")


def test_summary_marks_unreliable_noise_ceiling():
    # human_triplets.txt repeats 7 object sets (14 responses); the ceiling
    # then warns in the log, and the table must not show it as a usable bound.
    few = {"value": 0.5714, "n_responses": 14, "n_sets": 7}
    rows = dict((row[0], row[1:]) for row in summary_rows({"human_noise_ceiling": few}))
    assert rows["Noise ceiling"][0] == "0.571 (14 responses in 7 repeated sets, too few to compare with accuracies)"

    enough = {"value": 0.67, "n_responses": 400, "n_sets": 100}
    rows = dict((row[0], row[1:]) for row in summary_rows({"human_noise_ceiling": enough}))
    assert rows["Noise ceiling"][0] == "0.670 (400 responses in 100 repeated sets)"


def test_dimension_count_row_names_r2():
    # The count is the smallest k with r_k^2 >= 0.95 r_full^2, a share of
    # the explained variance and not of the r shown in the row above it.
    rows = dict((row[0], row[1:]) for row in summary_rows({"n_dnn_dims_for_95_percent": 12}))
    assert rows["DNN dimensions for 95% of the RSA's r²"] == ("", "12")


@pytest.mark.parametrize(("rsa", "expected"), [
    ({"cumulative_full_r": 0.03, "cumulative_full_r_ci_low": -0.17, "cumulative_full_r_ci_high": 0.23,
      "ci_level": 0.95, "n_bootstrap": 20},
     "n/a: the 95% interval [-0.170, 0.230] of the full DNN model's r contains 0"),
    ({"cumulative_full_r": -0.2, "cumulative_full_r_ci_low": -0.3, "cumulative_full_r_ci_high": -0.1,
      "ci_level": 0.95, "n_bootstrap": 20},
     "n/a: the full DNN model's r = -0.200 is not above 0"),
    ({"cumulative_full_r": 0.4, "cumulative_full_r_ci_low": None, "cumulative_full_r_ci_high": None,
      "ci_level": 0.95, "n_bootstrap": 20},
     "n/a: no bootstrap sample of the full DNN model's r gave a correlation"),
    ({"cumulative_full_r": 0.4, "cumulative_full_r_ci_low": None, "cumulative_full_r_ci_high": None,
      "ci_level": 0.95, "n_bootstrap": 0},
     "not reached"),
    ({"cumulative_full_r": 0.4, "cumulative_full_r_ci_low": 0.2, "cumulative_full_r_ci_high": 0.6,
      "ci_level": 0.95, "n_bootstrap": 20},
     "not reached"),
])
def test_dimension_count_row_says_why_missing(rsa, expected):
    # compare writes a null count both when no prefix of DNN dimensions
    # reaches 95% and when that share means nothing (CumulativeRSA.share_defined).
    from dimalign.report.results import undefined_share_reason

    numbers = {"n_dnn_dims_for_95_percent": None, "share_undefined": undefined_share_reason(rsa)}
    rows = dict((row[0], row[1:]) for row in summary_rows(numbers))
    assert rows["DNN dimensions for 95% of the RSA's r²"] == ("", expected)


def test_tiny_report_dimension_count_row(report):
    _, document, results = report
    rsa = json.loads((results.study_dir / "compare" / "rsa.json").read_text())
    # The tiny study's fits are far from converged, so the interval of its r contains 0.
    assert rsa["n_dnn_dims_for_95_percent"] is None
    assert rsa["cumulative_full_r_ci_low"] <= 0 <= rsa["cumulative_full_r_ci_high"]
    cell = (
        f"n/a: the 95% interval [{rsa['cumulative_full_r_ci_low']:.3f}, {rsa['cumulative_full_r_ci_high']:.3f}] "
        "of the full DNN model's r contains 0"
    )
    name = "DNN dimensions for 95% of the RSA's r²"
    assert f"<tr><th scope=\"row\">{html.escape(name)}</th><td></td><td>{html.escape(cell)}</td></tr>" in document
    assert "not reached" not in document


def test_ridge_row_follows_map_target():
    name = "Ridge map from features, median cross-validated R²"
    rows = dict((row[0], row[1:]) for row in summary_rows({"ridge_cv_r2_median": 0.25, "ridge_target": "human"}))
    assert rows[name] == ("0.250", "")
    rows = dict((row[0], row[1:]) for row in summary_rows({"ridge_cv_r2_median": 0.25, "ridge_target": "dnn"}))
    assert rows[name] == ("", "0.250")


def test_nested_ridge_row_comes_first():
    numbers = {"ridge_nested_cv_r2_median": 0.2, "ridge_cv_r2_median": 0.25, "ridge_target": "dnn"}
    rows = [row for row in summary_rows(numbers) if row[0].startswith("Ridge map")]
    assert rows == [
        ("Ridge map from features, median nested cross-validated R²", "", "0.200"),
        ("Ridge map from features, median cross-validated R²", "", "0.250"),
    ]


def test_headline_has_nested_ridge_median(tiny_results, tiny_study):
    from dimalign.analysis.ridge import RidgeMap

    nested = RidgeMap.load(tiny_study / "map").nested_cv_r2_
    numbers = tiny_results.headline()

    assert np.isfinite(nested).all()
    assert numbers["ridge_nested_cv_r2_median"] == pytest.approx(float(np.median(nested)), abs=1e-9)


def test_ridge_panel_shows_nested_first(tiny_results, tiny_study):
    from dimalign.analysis.ridge import RidgeMap
    from dimalign.report.html import _ridge_by_dim

    ridge = RidgeMap.load(tiny_study / "map")
    values = _ridge_by_dim(tiny_results)[tiny_results.ridge_target()]

    assert values[0] == (
        f"{ridge.nested_cv_r2_[0]:.4f} nested, {ridge.cv_r2_[0]:.4f} at the penalty that the same folds chose"
    )
    assert len(values) == ridge.cv_r2_.size


def test_script_json_cannot_close_script():
    text = script_json({"label": "</script><script>alert(1)</script>", "value": float("nan")})
    assert "<" not in text
    assert ">" not in text
    assert json.loads(text) == {"label": "</script><script>alert(1)</script>", "value": None}


def test_report_command_uses_recorded_inputs(tiny_study, tmp_path, capsys):
    out = tmp_path / "cli-report.html"
    status = main(["report", str(tiny_study), "-o", str(out), "--top-k", "3"])
    assert status == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1].startswith(f"wrote {out}: 4 figures")
    assert "left out kind_shares: no labels summary given (--labels, or inputs.labels in the study file)" in printed
    document = out.read_text(encoding="utf-8")
    # The study recorded its categories, so the matrices are sorted and labelled by them.
    assert (tmp_path / "cli-report_figures" / "similarity_matrices.svg").is_file()
    assert "<title>Tiny study</title>" in document


def copy_whole_study(tiny_study, tmp_path):
    """Copy the tiny study with its report folder, so that a test may change the report's record."""
    import shutil

    copy = tmp_path / "whole-study"
    shutil.copytree(tiny_study, copy)
    return copy


def test_report_command_uses_recorded_report_title(tiny_study, tmp_path):
    # As after a run whose study file set report.title.
    study = copy_whole_study(tiny_study, tmp_path)
    manifest_path = study / "report" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["pipeline"]["settings"]["title"] = "Custom <title>"
    manifest_path.write_text(json.dumps(manifest))

    out = tmp_path / "r.html"
    assert main(["report", str(study), "-o", str(out)]) == 0
    assert "<title>Custom &lt;title&gt;</title>" in out.read_text(encoding="utf-8")

    assert main(["report", str(study), "-o", str(out), "--title", "Option"]) == 0
    assert "<title>Option</title>" in out.read_text(encoding="utf-8")


def test_report_command_default_title_as_pipeline(tiny_study, tmp_path):
    # A study without a name and without a report stage: the same default as dimalign run.
    from dimalign.report.html import DEFAULT_TITLE

    study = copy_study(tiny_study, tmp_path)
    record = json.loads((study / "pipeline.json").read_text())
    record["study"]["name"] = ""
    record["stages"] = [stage for stage in record["stages"] if stage["name"] != "report"]
    (study / "pipeline.json").write_text(json.dumps(record))

    out = tmp_path / "r.html"
    assert main(["report", str(study), "-o", str(out)]) == 0
    assert f"<title>{DEFAULT_TITLE}</title>" in out.read_text(encoding="utf-8")


def test_report_warns_of_missing_recorded_input(tiny_study, tmp_path, capsys):
    # A study moved to another machine keeps the input paths of the first one.
    study = copy_study(tiny_study, tmp_path)
    record = json.loads((study / "pipeline.json").read_text())
    gone = tmp_path / "moved" / "categories.tsv"
    record["inputs"]["categories"] = str(gone)
    (study / "pipeline.json").write_text(json.dumps(record))

    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 0
    error = capsys.readouterr().err
    assert f"{study / 'pipeline.json'} records inputs.categories = {gone}, which no longer exists" in error
    assert "pass --categories to use it" in error


@pytest.mark.parametrize(("key", "option", "kind"), [("categories", "--categories", "folder"),
                                                      ("images", "--images", "file"), ("labels", "--labels", "file")])
def test_report_rejects_recorded_input_of_wrong_kind(tiny_study, tmp_path, capsys, key, option, kind):
    study = copy_study(tiny_study, tmp_path)
    wrong = tmp_path / "wrong"
    if kind == "folder":
        wrong.mkdir()
    else:
        wrong.write_text("x")
    record = json.loads((study / "pipeline.json").read_text())
    record["inputs"][key] = str(wrong)
    (study / "pipeline.json").write_text(json.dumps(record))

    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 1
    error = capsys.readouterr().err
    assert f"{study / 'pipeline.json'} records inputs.{key} = {wrong}, which is now a {kind}" in error
    assert f"pass {option}" in error
    assert not (tmp_path / "r.html").exists()


def test_report_rejects_labels_of_larger_embedding(tiny_study, tmp_path, capsys):
    # Labels of a dimension the fit does not have come from another fit, so
    # those of the dimensions it has would be shown on the wrong dimensions.
    from report_helpers import write_labels

    from dimalign.io.runs import load_embedding

    n_dims = load_embedding(tiny_study / "human_fit").n_dims
    labels = write_labels(tmp_path / "labels", {"human_fit": n_dims + 2, "dnn_fit": 1})
    out = tmp_path / "r.html"
    assert main(["report", str(tiny_study), "-o", str(out), "--labels", str(labels)]) == 1
    error = capsys.readouterr().err
    line = n_dims + 2  # the header, then dimensions 0 .. n_dims - 1 of human_fit
    assert (
        f"{labels / 'dimensions.csv'}, line {line}: embedding 'human_fit' dimension {n_dims} does not exist: "
        f"the human fit has {n_dims} dimensions (0 to {n_dims - 1})"
    ) in error
    assert "rerun 'dimalign labels summarize'" in error
    assert not out.exists()


def test_report_labels_under_other_embedding_names(tiny_study, tmp_path, capsys):
    from report_helpers import write_labels

    labels = write_labels(tmp_path / "labels", {"people": 6, "vgg16": 6})
    out = tmp_path / "r.html"
    assert main(["report", str(tiny_study), "-o", str(out), "--labels", str(labels)]) == 1
    error = capsys.readouterr().err
    assert f"{labels / 'dimensions.csv'} labels no embedding named 'human_fit' or 'dnn_fit'" in error
    assert "its embeddings: people, vgg16" in error
    assert not out.exists()

    options = ["--labels", str(labels), "--labels-human", "people", "--labels-dnn", "vgg16"]
    assert main(["report", str(tiny_study), "-o", str(out), *options]) == 0
    assert "label 0 (2)" in out.read_text(encoding="utf-8")


def test_report_labels_named_like_missing(tiny_study, tmp_path):
    # By default, pandas reads NA and None as missing values.
    from report_helpers import write_labels

    labels = write_labels(tmp_path / "labels", {"NA": 6, "None": 6})
    out = tmp_path / "r.html"
    options = ["--labels", str(labels), "--labels-human", "NA", "--labels-dnn", "None"]
    assert main(["report", str(tiny_study), "-o", str(out), *options]) == 0
    assert "label 0 (2)" in out.read_text(encoding="utf-8")


def test_pipeline_report_stage_writes_report(tiny_study):
    document = (tiny_study / "report" / "report.html").read_text(encoding="utf-8")
    assert "<h1>Tiny study</h1>" in document
    assert "unfinished-run" not in document
    assert (tiny_study / "report" / "figures" / "matching.png").is_file()
    manifest = json.loads((tiny_study / "report" / "manifest.json").read_text())
    assert manifest["pipeline"]["outputs"]["figures"] == 4
    assert manifest["outputs"]["skipped"] == {"kind_shares": "no labels summary given (--labels, or inputs.labels in the study file)"}


def test_report_of_missing_study(tmp_path, capsys):
    status = main(["report", str(tmp_path / "none"), "-o", str(tmp_path / "r.html")])
    assert status == 1
    assert "study directory" in capsys.readouterr().err


@pytest.mark.parametrize("stage_folders", [(), ("human_fit", "dnn_fit", "compare")])
def test_report_of_empty_study_fails(tmp_path, capsys, stage_folders):
    study = tmp_path / "study"
    study.mkdir()
    for folder in stage_folders:
        (study / folder).mkdir()
        (study / folder / "manifest.json").write_text("{}\n", encoding="utf-8")
    out = tmp_path / "out" / "report.html"

    status = main(["report", str(study), "-o", str(out)])

    assert status == 1
    error = capsys.readouterr().err
    assert f"study directory {study} contains no results to report" in error
    assert str(study / "human_fit" / "embedding.npz") in error
    assert str(study / "dnn_fit" / "embedding.npz") in error
    assert str(study / "compare" / "matching.csv") in error
    assert not (tmp_path / "out").exists()


def copy_study(tiny_study, tmp_path):
    """Copy the tiny study without its report, so that a test may change it."""
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(tiny_study, copy, ignore=shutil.ignore_patterns("report"))
    return copy


def visible_text(document: str) -> str:
    """The document without its base64 figures, whose letters could match anything."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]*", "", document)


def test_pipeline_report_shows_no_absolute_path(tiny_study):
    # The report is meant to be sent or zipped, so it names no folder of the machine that wrote it.
    text = visible_text((tiny_study / "report" / "report.html").read_text(encoding="utf-8"))
    root = str(tiny_study.parent.resolve())
    assert root not in text
    assert "Study directory study, study file study.toml." in text


def test_report_writes_paths_of_notes_relative(tiny_study, tmp_path, capsys):
    study = copy_study(tiny_study, tmp_path)
    (study / "compare" / "disagreements.csv").unlink()
    record = json.loads((study / "pipeline.json").read_text())
    record["changes"] = [{"key": "study.seed", "before": 0, "after": 1, "kind": "changed"}]
    (study / "pipeline.json").write_text(json.dumps(record))

    out = tmp_path / "r.html"
    assert main(["report", str(study.resolve()), "-o", str(out)]) == 0
    text = visible_text(out.read_text(encoding="utf-8"))
    assert str(tmp_path.resolve()) not in text
    assert str(tiny_study.parent.resolve()) not in text
    # The note names the missing file inside the study directory, and the study file by its name.
    assert "<strong>disagreements</strong>: study/compare/disagreements.csv not found" in text
    assert "instead of the study file study.toml;" in text


def test_report_writes_changes_as_toml_values(tiny_study, tmp_path):
    # The study file is TOML, so the notes write its values as TOML does.
    study = copy_study(tiny_study, tmp_path)
    record = json.loads((study / "pipeline.json").read_text())
    record["changes"] = [
        {"key": "study.device", "before": "cpu", "after": 'cu"da', "kind": "changed"},
        {"key": "inputs.labels", "before": None, "after": "labels", "kind": "added"},
    ]
    (study / "pipeline.json").write_text(json.dumps(record))
    manifest_path = study / "map" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["pipeline"]["changes"] = [{"key": "map.shuffle", "before": False, "after": True, "kind": "changed"}]
    manifest_path.write_text(json.dumps(manifest))

    out = tmp_path / "r.html"
    assert main(["report", str(study), "-o", str(out)]) == 0
    notes = out.read_text(encoding="utf-8").split('id="changed-settings"', 1)[1].split("</section>", 1)[0]
    assert "<code>study.device</code>: &quot;cpu&quot; &rarr; &quot;cu\\&quot;da&quot; (changed)" in notes
    assert "<code>inputs.labels</code>: not set &rarr; &quot;labels&quot; (added)" in notes
    assert "<code>map.shuffle</code>: false &rarr; true (changed)" in notes


def test_similarity_caption_names_object_subset(tiny_study, tmp_path):
    # As after compare.matrix_objects = 10: the matrices cover a random subset of the objects.
    import numpy as np

    study = copy_study(tiny_study, tmp_path)
    rows = np.array([3, 0, 7, 12, 5, 9, 20, 1, 15, 22])
    for side in ("human", "dnn"):
        path = study / "compare" / f"{side}_similarity.npy"
        np.save(path, np.load(path)[np.ix_(rows, rows)])
    np.save(study / "compare" / "similarity_objects.npy", rows)

    out = tmp_path / "r.html"
    write_report(StudyResults(study), out)
    document = out.read_text(encoding="utf-8")
    caption = document.split('id="figure-similarity_matrices"', 1)[1].split("</figcaption>", 1)[0]
    assert "every pair of objects" not in caption
    assert "every pair of a subset of 10 of the 24 objects (compare.matrix_objects)" in caption


def test_report_rejects_stage_folders_of_different_runs(tiny_study, tmp_path, capsys):
    study = copy_study(tiny_study, tmp_path)
    # As after a run that refitted human_fit and then failed before compare.
    manifest_path = study / "human_fit" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["pipeline"]["hash"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))

    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 1
    error = capsys.readouterr().err
    assert "come from different runs" in error
    assert f"compare was computed from another human_fit than the one in {study / 'human_fit'}" in error
    assert not (tmp_path / "r_figures").exists()


def test_report_rejects_stage_replaced_by_other_command(tiny_study, tmp_path, capsys):
    import shutil

    study = copy_study(tiny_study, tmp_path)
    command = ["compare", str(study / "dnn_fit"), str(study / "human_fit"), "--bootstrap", "0"]
    # compare rejects the study's stage folder as its output folder.
    assert main([*command, "-o", str(study / "compare")]) == 1
    assert f"{study / 'compare'} is the folder of stage compare of the study" in capsys.readouterr().err
    # A comparison of other inputs moved over the stage folder by hand has no stage record.
    assert main([*command, "-o", str(tmp_path / "other")]) == 0
    shutil.rmtree(study / "compare")
    shutil.move(tmp_path / "other", study / "compare")
    capsys.readouterr()

    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 1
    error = capsys.readouterr().err
    assert f"{study / 'compare'} has no pipeline record" in error
    assert not (tmp_path / "r.html").exists()


def test_report_result_line_is_last(tiny_study, tmp_path, capsys):
    for quiet in ([], ["-q"]):
        out = tmp_path / f"report{''.join(quiet)}.html"

        assert main([*quiet, "report", str(tiny_study), "-o", str(out), "--top-k", "3"]) == 0

        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "  left out kind_shares: no labels summary given (--labels, or inputs.labels in the study file)"
        assert lines[-1] == f"wrote {out}: 4 figures, 12 dimensions"
        assert len(lines) == 2


def test_report_skips_unplanned_stages(tiny_study, tmp_path, capsys):
    study = copy_study(tiny_study, tmp_path)
    record = json.loads((study / "pipeline.json").read_text())
    record["stages"] = [stage for stage in record["stages"] if stage["name"] not in ("compare", "map")]
    (study / "pipeline.json").write_text(json.dumps(record))

    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 0
    assert "left out matching:" in capsys.readouterr().out
    assert "Human-DNN RSA (Pearson r)" not in (tmp_path / "r.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--top-k", "0"], "--top-k 0 is invalid"), (["--dpi", "-1"], "--dpi -1 is invalid"),
     (["--dpi", "11000"], "--dpi 11000 is invalid: use at most 600"),
     (["--categories", "missing.tsv"], "--categories missing.tsv: file not found"),
     (["--labels", "FILE"], "--labels .*FILE is a file: give a folder")],
)
def test_report_checks_options_before_writing(tiny_study, tmp_path, capsys, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("x")
    options = [str(tmp_path / "FILE") if option == "FILE" else option for option in options]
    assert main(["report", str(tiny_study), "-o", str(tmp_path / "out" / "r.html"), *options]) == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_report_rejects_bad_output_paths_and_record(tiny_study, tmp_path, capsys):
    assert main(["report", str(tiny_study), "-o", str(tmp_path)]) == 1
    assert f"{tmp_path} is a folder" in capsys.readouterr().err
    assert main(["report", str(tiny_study), "-o", str(tiny_study / "human_fit" / "embedding.npz")]) == 1
    assert "lies inside the stage folder" in capsys.readouterr().err

    study = copy_study(tiny_study, tmp_path)
    (study / "pipeline.json").write_text("{broken")
    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 1
    assert f"{study / 'pipeline.json'} is not a readable study record" in capsys.readouterr().err


def test_report_without_record_still_checks_stage_hashes(tiny_study, tmp_path, capsys):
    study = copy_study(tiny_study, tmp_path)
    (study / "pipeline.json").unlink()
    manifest_path = study / "human_fit" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["pipeline"]["hash"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 1
    assert "come from different runs" in capsys.readouterr().err


def test_report_output_inside_any_stage_folder_is_rejected(tiny_study, tmp_path, capsys):
    assert main(["report", str(tiny_study), "-o", str(tiny_study / "report" / "mine.html")]) == 1
    assert "lies inside the stage folder" in capsys.readouterr().err
    assert main(["report", str(tiny_study), "-o", str(tmp_path / "r.html"), "--figures-dir",
                 str(tiny_study / "compare")]) == 1
    assert "--figures-dir" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["report", str(tiny_study), "-o", str(tmp_path / "afile" / "r.html")]) == 1
    assert "afile is a file, not a folder" in capsys.readouterr().err
    assert not (tiny_study / "report" / "mine.html").exists()


def test_report_of_unfinished_run_shows_stage_settings(tiny_study, tmp_path):
    study = copy_study(tiny_study, tmp_path)
    record = json.loads((study / "pipeline.json").read_text())
    # A run that set n_triplets and failed before dnn_triplets finished.
    record["finished"] = None
    record["changes"] = [{"key": "dnn_triplets.n_triplets", "before": 800, "after": 1000, "kind": "changed"}]
    (study / "pipeline.json").write_text(json.dumps(record))

    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 0
    document = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'id="unfinished-run"' in document
    assert "dnn_triplets.n_triplets" not in document


def test_report_names_an_empty_result_table(tiny_study, tmp_path, capsys):
    study = copy_study(tiny_study, tmp_path)
    (study / "compare" / "matching.csv").write_text("")
    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 1
    assert f"{study / 'compare' / 'matching.csv'} cannot be read as a table" in capsys.readouterr().err


def test_report_keeps_existing_non_html_output(tiny_study, tmp_path, capsys):
    study = copy_study(tiny_study, tmp_path)
    record = (study / "pipeline.json").read_text()
    assert main(["report", str(study), "-o", str(study / "pipeline.json")]) == 1
    assert "is an existing file that is not an HTML report" in capsys.readouterr().err
    assert (study / "pipeline.json").read_text() == record
    assert not (study / "pipeline_figures").exists()

    (tmp_path / "old.html").write_text("old report")
    assert main(["report", str(study), "-o", str(tmp_path / "old.html")]) == 0
    assert (tmp_path / "old.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("compare/rsa.json", "{", "compare/rsa.json cannot be read as JSON"),
        ("evaluate/summary.json", "[1, 2]", "evaluate/summary.json is not a JSON object"),
        ("compare/matching.csv", "rank,method\n0,greedy\n", "compare/matching.csv has no column human_dim, dnn_dim, r"),
        ("human_fit/history.csv", "epoch,foo\n1,2\n", "human_fit/history.csv has no column loss, train_accuracy"),
        ("map/ridge_map.csv", "dimension,alpha\n0,1.0\n", "map/ridge_map.csv has no column cv_r2"),
        ("human_fit/history.csv", "epoch,loss,train_accuracy,n_dims\n1,x,0.5,6\n",
         "human_fit/history.csv, line 2, column 'loss': 'x' is invalid; use a number"),
        ("compare/matching.csv", "rank,method,human_dim,dnn_dim,r\n1,greedy,0,1.5,0.2\n",
         "compare/matching.csv, line 2, column 'dnn_dim': '1.5' is invalid; use an integer"),
        ("pipeline.json", '{"stages": 5}', "'stages' must be a JSON array"),
        ("pipeline.json", '{"inputs": [1]}', "'inputs' must be a JSON object"),
        # An unreadable fit record makes the fit count as missing for the stages that read it.
        ("dnn_fit/manifest.json", "[1]", "compare was computed from dnn_fit, but"),
        ("dnn_fit/manifest.json", b'{"step": "caf\xe9"}', "dnn_fit/manifest.json is not UTF-8"),
        ("dnn_fit/manifest.json", "{", "dnn_fit has no readable pipeline record in its manifest.json"),
        ("pipeline.json", '{"stages": [{"name": ["x"]}]}', "entry 1 of 'stages' must be a JSON object with a string 'name'"),
        ("pipeline.json", '{"stages": ["human_fit"]}', "entry 1 of 'stages' must be a JSON object with a string 'name'"),
        ("pipeline.json", '{"study": {"name": 5}}', "'study.name' must be a JSON string"),
        ("pipeline.json", '{"inputs": {"images": 5}}', "'inputs.images' must be a JSON string"),
        ("pipeline.json", '{"changes": [5]}', "entry 1 of 'changes' must be a JSON object with the keys key, before, after, kind"),
        ("pipeline.json", '{"changes": [{"key": "study.name"}]}', "entry 1 of 'changes' must be a JSON object"),
    ],
)
def test_report_names_a_damaged_file(tiny_study, tmp_path, capsys, name, content, message):
    """Damaged result files and records give one error naming the file, and no report."""
    study = copy_study(tiny_study, tmp_path)
    if isinstance(content, bytes):
        (study / name).write_bytes(content)
    else:
        (study / name).write_text(content)
    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("stage", "key", "value", "message"),
    [
        ("compare", "upstream", [1], "'upstream' must be a JSON object of stage hashes"),
        ("compare", "changes", [5], "entry 1 of 'changes' must be a JSON object with the keys key, before, after, kind"),
        ("human_fit", "changes", [{"key": "human_fit.n_dims"}], "entry 1 of 'changes' must be a JSON object"),
        ("human_fit", "hash", 5, "'hash' must be a JSON string"),
    ],
)
def test_report_names_an_invalid_stage_record(tiny_study, tmp_path, capsys, stage, key, value, message):
    """A stage record of the wrong shape counts as unreadable, and the log names the file and the key."""
    study = copy_study(tiny_study, tmp_path)
    manifest_path = study / stage / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["pipeline"][key] = value
    manifest_path.write_text(json.dumps(manifest))

    main(["report", str(study), "-o", str(tmp_path / "r.html")])
    error = capsys.readouterr().err
    assert f"{manifest_path} has an invalid pipeline record: {message}" in error
    assert "Traceback" not in error


def test_report_rejects_fit_outputs_not_object(tiny_study, tmp_path, capsys):
    study = copy_study(tiny_study, tmp_path)
    manifest_path = study / "human_fit" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["outputs"] = [1]
    manifest_path.write_text(json.dumps(manifest))

    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 1
    assert f"{manifest_path}: outputs = [1] is invalid: expected a JSON object" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("name", "keys", "value", "message"),
    [
        ("evaluate/summary.json", ["human"], 5, "human = 5 is invalid: expected a JSON object"),
        ("evaluate/summary.json", ["human", "accuracy"], "high", "human.accuracy = 'high' is invalid: expected a number"),
        ("evaluate/summary.json", ["human_noise_ceiling"], 5, "human_noise_ceiling = 5 is invalid: expected a JSON object"),
        ("evaluate/summary.json", ["human_noise_ceiling", "n_sets"], None, "human_noise_ceiling.n_sets = None is invalid"),
        ("compare/rsa.json", ["r"], "high", "r = 'high' is invalid: expected a number"),
        ("compare/rsa.json", ["similarity_objects"], [1], "similarity_objects = [1] is invalid: expected a number"),
        ("human_fit/manifest.json", ["outputs", "n_dims"], "six", "outputs.n_dims = 'six' is invalid: expected a number"),
    ],
)
def test_report_names_an_invalid_saved_number(tiny_study, tmp_path, capsys, name, keys, value, message):
    study = copy_study(tiny_study, tmp_path)
    path = study / name
    record = json.loads(path.read_text())
    parent = record
    for key in keys[:-1]:
        parent = parent[key]
    parent[keys[-1]] = value
    path.write_text(json.dumps(record))

    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 1
    assert f"{path}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("human_dim", "x", "column 'human_dim': 'x' is invalid; use an integer"),
        ("object_1", "99", "column 'object_1': 99 is invalid; use an object index from 0 to 23"),
        ("dnn_odd_one_out", "-1", "column 'dnn_odd_one_out': -1 is invalid; use an object index from 0 to 23"),
        ("p_human", "sure", "column 'p_human': 'sure' is invalid; use a number"),
    ],
)
def test_report_names_an_invalid_disagreement(tiny_study, tmp_path, capsys, column, value, message):
    import pandas as pd

    study = copy_study(tiny_study, tmp_path)
    path = study / "compare" / "disagreements.csv"
    table = pd.read_csv(path, dtype=str)
    table.loc[0, column] = value
    table.to_csv(path, index=False)

    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 1
    assert f"{path}, line 2, {message}" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("shape", [(24,), (24, 23), (2, 12, 24)])
def test_report_names_a_similarity_matrix_of_wrong_shape(tiny_study, tmp_path, capsys, shape):
    import numpy as np

    study = copy_study(tiny_study, tmp_path)
    path = study / "compare" / "human_similarity.npy"
    np.save(path, np.zeros(shape))

    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 1
    assert f"{path} contains an array of shape {shape}, not a square similarity matrix" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda path: path.write_bytes(b"garbage"), "cannot be read as an archive of arrays: it is not a .npz "
                                                    "archive, because it does not start with the zip signature"),
        (lambda path: __import__("numpy").savez(path, other=[1]), "has no arrays named 'human_most_relevant' "
                                                                   "and 'dnn_most_relevant' (found ['other'])"),
    ],
)
def test_report_names_a_damaged_relevance_archive(tiny_study, tiny_labels, tmp_path, capsys, write, message):
    study = copy_study(tiny_study, tmp_path)
    path = study / "compare" / "triplet_relevance.npz"
    write(path)

    assert main(["report", str(study), "-o", str(tmp_path / "r.html"), "--labels", str(tiny_labels)]) == 1
    assert f"{path} {message}" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("name", "column", "value", "message"),
    [
        ("dimensions.csv", "dimension", "x", ", line 2, column 'dimension': 'x' is invalid; use an integer"),
        ("dimensions.csv", "dimension", "0.5", ", line 2, column 'dimension': '0.5' is invalid; use an integer"),
        ("shares.csv", "share", "lots", ", line 2, column 'share': 'lots' is invalid; use a number"),
        ("dimensions.csv", "resolved_kind", None, " has no column resolved_kind"),
    ],
)
def test_report_names_an_invalid_labels_table(tiny_study, tiny_labels, tmp_path, capsys, name, column, value, message):
    import shutil

    import pandas as pd

    labels = tmp_path / "labels"
    shutil.copytree(tiny_labels, labels)
    table = pd.read_csv(labels / name, dtype=str)
    if value is None:
        table = table.drop(columns=[column])
    else:
        table.loc[0, column] = value
    table.to_csv(labels / name, index=False)

    assert main(["report", str(tiny_study), "-o", str(tmp_path / "r.html"), "--labels", str(labels)]) == 1
    assert f"{labels / name}{message}" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("name", ["human_similarity.npy", "dnn_similarity.npy", "similarity_objects.npy"])
def test_report_names_a_truncated_array(tiny_study, tmp_path, capsys, name):
    study = copy_study(tiny_study, tmp_path)
    path = study / "compare" / name
    path.write_bytes(path.read_bytes()[:150])

    assert main(["report", str(study), "-o", str(tmp_path / "r.html")]) == 1
    assert f"{path} cannot be read as an array" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
    assert not (tmp_path / "r_figures").exists()


def test_report_of_fit_without_dimensions(tiny_study, tmp_path):
    import shutil

    import numpy as np

    study = tmp_path / "study"
    shutil.copytree(tiny_study / "human_fit", study / "human_fit")
    path = study / "human_fit" / "embedding.npz"
    with np.load(path) as archive:
        arrays = dict(archive)
    # What a fit writes when pruning removed every dimension.
    arrays.update(embedding=arrays["embedding"][:, :0], scales=arrays["scales"][:, :0], kept_dims=np.zeros(0, int))
    np.savez(path, **arrays)

    written = write_report(StudyResults(study), tmp_path / "r.html")
    assert written.n_dimensions == 0
    document = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "The human fit kept no dimension: pruning removed them all." in document
    assert "No fitted embedding" not in document


def test_run_without_report_stage_names_no_report(tiny_study, tmp_path, capsys):
    import shutil

    study = tmp_path / "study"
    shutil.copytree(tiny_study, study)
    text = (tiny_study.parent / "study.toml").read_text()
    text = text[: text.index("[report]")].replace('data_dir = "data"', f'data_dir = "{tiny_study.parent / "data"}"')
    (tmp_path / "no_report.toml").write_text(text)

    assert main(["run", str(tmp_path / "no_report.toml"), "-o", str(study)]) == 0
    output = capsys.readouterr().out
    assert "report  " not in output
    assert output.rstrip().endswith(f"study written to {study}")


def test_report_of_stage_folder_or_file_names_study(tiny_study, tmp_path, capsys):
    assert main(["report", str(tiny_study / "human_fit"), "-o", str(tmp_path / "r.html")]) == 1
    assert f"is the human_fit stage folder of a study: give the study directory {tiny_study}" in capsys.readouterr().err
    assert main(["report", str(tiny_study / "pipeline.json"), "-o", str(tmp_path / "r.html")]) == 1
    assert "pipeline.json is a file: give the folder" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_report_ignores_foreign_pipeline_record(tiny_study, tmp_path, capsys):
    """Only a dimalign study record makes a folder named 'map' a stage folder, as for dimalign run."""
    import shutil

    projects = tmp_path / "projects"
    study = projects / "map"
    shutil.copytree(tiny_study, study)
    (projects / "pipeline.json").write_text(json.dumps({"name": "ci", "steps": ["build"]}))

    status = main(["report", str(study), "-o", str(tmp_path / "r.html")])

    assert status == 0, capsys.readouterr().err
    assert (tmp_path / "r.html").is_file()


def test_report_removes_its_stale_figures_only(tiny_study, tmp_path):
    """A dimension figure of an earlier, larger fit goes; files the report never writes stay."""
    study = copy_study(tiny_study, tmp_path)
    figures_dir = tmp_path / "figures"
    figures_dir.mkdir()
    for name in ("dimension_human_149.png", "dimension_human_149.svg", "notes.png", "dimension_other.png"):
        (figures_dir / name).write_bytes(b"old")

    assert main(["report", str(study), "-o", str(tmp_path / "r.html"), "--figures-dir", str(figures_dir)]) == 0

    names = {entry.name for entry in figures_dir.iterdir()}
    assert "dimension_human_149.png" not in names
    assert "dimension_human_149.svg" not in names
    assert {"notes.png", "dimension_other.png", "dimension_human_000.png", "similarity_matrices.png"} <= names
