"""The example THINGS study end to end with shortened settings: run, skip, rerun downstream, view.

Set DIMALIGN_DOC_IMAGES=1 to copy the report's screenshot to docs/img/report.png.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_helpers import open_report

from dimalign.cli import main
from dimalign.report.stage_records import read_stage_record

pytestmark = pytest.mark.filterwarnings("ignore:the chosen ridge penalty")

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGES = ["human_fit", "dnn_triplets", "dnn_fit", "evaluate", "compare", "map", "report"]

#: Shortened settings: minutes on 2 CPU cores instead of hours.
SHORT = [
    "human_fit.max_epochs=3", "dnn_fit.max_epochs=3", "human_fit.n_dims=20", "dnn_fit.n_dims=20",
    "dnn_triplets.n_triplets=20000",
    "compare.similarity_objects=150", "compare.n_bootstrap=100",
]


def run(study_dir: Path, *extra: str) -> int:
    arguments = ["-q", "run", "examples/things_study.toml", "-o", str(study_dir)]
    for setting in [*SHORT, *extra]:
        arguments += ["--set", setting]
    return main(arguments)


def stage_table(output: str) -> dict[str, str]:
    """Map each stage to its action in the printed plan."""
    rows = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in STAGES and parts[1] in ("run", "skip"):
            rows[parts[0]] = parts[1]
    return rows


@pytest.fixture(scope="module")
def things_study(tmp_path_factory, things_dir):
    study_dir = tmp_path_factory.mktemp("things") / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO_ROOT)
        status = run(study_dir)
    assert status == 0
    return study_dir


@pytest.mark.slow
def test_things_study_runs_every_stage(things_study):
    for name in STAGES:
        assert read_stage_record(things_study / name) is not None, name
    human = json.loads((things_study / "evaluate" / "human.json").read_text())
    dnn = json.loads((things_study / "evaluate" / "dnn.json").read_text())
    assert human["n_objects"] == dnn["n_objects"] == 1854
    assert human["n_triplets"] + len(np.load(things_study / "human_fit" / "train.npy")) == 131_552
    assert dnn["n_triplets"] == 2000
    assert 0.3 < human["accuracy"] < 0.7
    assert -1.0 <= human["things48_r"] <= 1.0
    summary = json.loads((things_study / "evaluate" / "summary.json").read_text())
    # Counted in the file: 7 object sets of human_triplets.txt were judged twice.
    assert summary["human_noise_ceiling"]["n_sets"] == 7
    similarity = np.load(things_study / "compare" / "human_similarity.npy", mmap_mode="r")
    assert similarity.shape == (1854, 1854)
    rsa = json.loads((things_study / "compare" / "rsa.json").read_text())
    assert rsa["similarity_objects"] == 150
    document = (things_study / "report" / "report.html").read_text(encoding="utf-8")
    assert "THINGS: human and VGG-16-like dimensions" in document
    assert "human_fit.max_epochs</code>: 1000 &rarr; 3 (shortened)" in document
    record = json.loads((things_study / "report" / "manifest.json").read_text())
    assert record["outputs"]["figures"] == [
        "similarity_matrices", "matching", "training_curves", "disagreements",
    ]


@pytest.mark.slow
@pytest.mark.browser
def test_things_report_in_chromium(things_study, tmp_path):
    from playwright.sync_api import sync_playwright

    report = things_study / "report" / "report.html"
    with sync_playwright() as playwright:
        browser, page, failed, errors, _ = open_report(playwright, report)
        try:
            assert failed == []
            assert errors == []
            assert page.locator("section.figure img").count() == 4
            page.select_option("#dimension-select", "dnn-3")
            assert page.locator("#dimension-title").text_content().startswith("DNN dimension 3")
            page.select_option("#dimension-select", "human-0")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 50_000
    if os.environ.get("DIMALIGN_DOC_IMAGES") == "1":
        target = REPO_ROOT / "docs" / "img" / "report.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        # A 256-colour palette keeps the documentation image small.
        with Image.open(tmp_path / "report.png") as image:
            image.convert("RGB").quantize(colors=256).save(target, optimize=True)


@pytest.mark.slow
def test_things_rerun_skips_then_follows_fit(things_study, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    capsys.readouterr()
    before = {name: read_stage_record(things_study / name)["finished"] for name in STAGES}

    assert run(things_study) == 0
    output = capsys.readouterr().out
    assert "human_fit.max_epochs: 1000 -> 3 (shortened)" in output
    assert "dnn_triplets.n_triplets: 131552 -> 20000 (shortened)" in output
    assert stage_table(output) == {name: "skip" for name in STAGES}

    assert run(things_study, "dnn_fit.max_epochs=2") == 0
    output = capsys.readouterr().out
    assert stage_table(output) == {
        "human_fit": "skip", "dnn_triplets": "skip", "dnn_fit": "run", "evaluate": "run",
        "compare": "run", "map": "run", "report": "run",
    }
    after = {name: read_stage_record(things_study / name)["finished"] for name in STAGES}
    assert after["human_fit"] == before["human_fit"]
    assert after["dnn_triplets"] == before["dnn_triplets"]
    assert read_stage_record(things_study / "dnn_fit")["outputs"]["n_epochs"] == 2
