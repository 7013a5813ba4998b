"""The labelling app in headless Chromium: consent, label, stop, resume, finish, keyboard only, restarts.

Set DIMALIGN_DOC_IMAGES=1 to also copy the screenshots to docs/img/ for the user docs.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from labeling_helpers import running_server

from dimalign.labeling.answers import Answer
from dimalign.labeling.study import Study
from dimalign.labeling.summary import summarize

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
DOC_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"

LABELS = {
    1: ["animals", "<script>alert(1)</script>"],
    2: ["inverted colours", "negative"],
    3: ["mixed scenes"],
    4: ["'); DROP TABLE answers;--", "texture"],
    5: ["round", "close-up"],
}
KINDS = {1: "semantic", 2: "visual", 3: "unclear", 4: "mixed", 5: "visual"}


def keep_screenshot(path: Path, name: str) -> None:
    if os.environ.get("DIMALIGN_DOC_IMAGES") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_IMAGES / name)


def answer_page(page, number: int) -> int:
    """Fill and submit the dimension page shown; return its dimension."""
    assert page.inner_text("#progress") == f"dimension {number} of 5"
    dimension = int(page.url.rsplit("/", 1)[1])
    for field, label in enumerate(LABELS[number], start=1):
        page.fill(f"#label-{field}", label)
    page.check(f"#kind-{KINDS[number]}")
    page.check("#interpretability-one" if number % 2 else "#interpretability-several")
    page.click("#submit")
    return dimension


@pytest.mark.browser
def open_first_dimension(page, base_url: str) -> None:
    """Agree on the consent page as a new participant and open the first dimension."""
    page.goto(base_url + "/consent")
    page.check("#agree")
    page.click("#consent-submit")
    page.click("#start")


def test_participant_flow_in_chromium(study_path, tmp_path):
    from playwright.sync_api import sync_playwright

    dialogs: list[str] = []
    answered: dict[int, int] = {}
    with running_server(study_path) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

            page.goto(base_url + "/")
            page.click("#start-study")
            page.check("#agree")
            page.click("#consent-submit")
            code = page.inner_text("#participant-code")
            participant_url = page.url.rsplit("/", 1)[0]

            # The grid of dimension 0 (animal photos first) shows 30 loaded images.
            page.goto(participant_url + "/dimension/0")
            page.wait_for_function(
                "() => Array.from(document.images).length === 30 && "
                "Array.from(document.images).every(image => image.complete && image.naturalWidth > 0)"
            )
            page.screenshot(path=str(tmp_path / "grid.png"), full_page=True)
            keep_screenshot(tmp_path / "grid.png", "labeling_grid.png")

            page.goto(participant_url + "/instructions")
            page.click("#start")

            for number in (1, 2, 3):
                answered[number] = answer_page(page, number)
            page.click("#stop")
            assert page.inner_text("#participant-code") == code

            page.goto(base_url + "/")
            page.fill("#code", code)
            page.click("#resume")
            for number in (4, 5):
                answered[number] = answer_page(page, number)

            assert page.url.endswith("/done")
            assert "Thank you" in page.inner_text("h1")
            summary_text = page.inner_text("#summary")
            assert "<script>alert(1)</script>" in summary_text
            assert "'); DROP TABLE answers;--" in summary_text
            page.screenshot(path=str(tmp_path / "done.png"), full_page=True)
            keep_screenshot(tmp_path / "done.png", "labeling_done.png")
        finally:
            browser.close()
    assert dialogs == []

    with sqlite3.connect(study_path) as connection:
        rows = connection.execute("SELECT participant_id, dimension, labels_json, kind FROM answers").fetchall()
    expected = {(1, answered[number], json.dumps(LABELS[number]), KINDS[number]) for number in LABELS}
    assert set(rows) == expected
    assert len(rows) == 5


@pytest.mark.browser
def test_summary_page_in_chromium(study_path, tmp_path):
    from playwright.sync_api import sync_playwright

    labels = {
        0: [["animals", "birds"], ["animal", "pets"], ["animals", "wildlife"]],
        1: [["inverted colours"], ["negative", "inverted colours"], ["dark", "negative"]],
        2: [["round"], ["circle", "round"], ["round", "sun"]],
        3: [["texture"], ["pattern"], ["texture", "fine"]],
        4: [["people"], ["scene"], ["unclear"]],
    }
    kinds = {0: ("semantic", "semantic", "semantic"), 1: ("visual", "visual", "visual"),
             2: ("visual", "mixed", "visual"), 3: ("visual", "visual", "mixed"),
             4: ("unclear", "mixed", "semantic")}
    with Study(study_path) as study:
        for rater in range(3):
            participant, _ = study.add_participant(order_seed=rater)
            for dimension in study.dimensions:
                study.save_answer(participant.participant_id, dimension, Answer(
                    labels=tuple(labels[dimension][rater]), kind=kinds[dimension][rater], interpretability="one"))
    out = tmp_path / "summary"
    summarize([study_path], out, wordcloud_size=(300, 150))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto((out / "summary.html").as_uri())
            page.wait_for_function(
                "() => Array.from(document.images).length === 5 && "
                "Array.from(document.images).every(image => image.complete && image.naturalWidth > 0)"
            )
            assert "semantic" in page.inner_text("#shares")
            page.screenshot(path=str(tmp_path / "summary.png"), full_page=True)
            keep_screenshot(tmp_path / "summary.png", "labeling_summary.png")
        finally:
            browser.close()


def press_until_focused(page, key: str, selector: str, limit: int = 20) -> None:
    """Press ``key`` until the element matching ``selector`` has the keyboard focus."""
    for _ in range(limit):
        if page.evaluate("selector => document.activeElement?.matches(selector) ?? false", selector):
            return
        page.keyboard.press(key)
    raise AssertionError(f"{selector} never got the focus with {key}")


def answer_by_keyboard(page, label: str) -> int:
    """Answer the dimension page shown with the keyboard alone; return its dimension."""
    dimension = int(page.url.rsplit("/", 1)[1])
    # The first label field has autofocus.
    assert page.evaluate("document.activeElement.id") == "label-1"
    page.keyboard.type(label)
    press_until_focused(page, "Tab", "#kind-visual")
    page.keyboard.press("ArrowDown")  # moves to and checks "semantic"
    press_until_focused(page, "Tab", "input[name=interpretability]")
    page.keyboard.press("Space")
    press_until_focused(page, "Tab", "#submit")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    return dimension


@pytest.mark.browser
def test_keyboard_back_reload_and_restart_in_chromium(study_path):
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            with running_server(study_path) as base_url:
                page.goto(base_url + "/")
                press_until_focused(page, "Tab", "#start-study")
                with page.expect_navigation():
                    page.keyboard.press("Enter")
                press_until_focused(page, "Tab", "#agree")
                page.keyboard.press("Space")
                press_until_focused(page, "Tab", "#consent-submit")
                with page.expect_navigation():
                    page.keyboard.press("Enter")
                press_until_focused(page, "Tab", "#start")
                with page.expect_navigation():
                    page.keyboard.press("Enter")

                first = answer_by_keyboard(page, "first label")
                second_url = page.url
                assert page.inner_text("#progress") == "dimension 2 of 5"

                # Enter on the link back opens the previous page with its saved answer.
                press_until_focused(page, "Tab", "a[href$='/dimension/%d']" % first)
                with page.expect_navigation():
                    page.keyboard.press("Enter")
                assert page.input_value("#label-1") == "first label"
                assert page.is_checked("#kind-semantic")
                page.go_back()
                assert page.url == second_url
                page.reload()
                assert page.inner_text("#progress") == "dimension 2 of 5"
                page.fill("#label-1", "typed while the server is down")
                page.check("#kind-visual")
                page.check("#interpretability-one")
                port = int(base_url.rsplit(":", 1)[1])

            # With the server stopped the browser shows its own error page, and nothing is saved.
            with pytest.raises(PlaywrightError, match="ERR_CONNECTION_REFUSED"), page.expect_navigation():
                page.click("#submit")
            page.wait_for_function("location.href.startsWith('chrome-error:')")
            with sqlite3.connect(study_path) as connection:
                assert connection.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 1

            # A restarted server accepts the session, because the cookie key is stored in the study.
            with running_server(study_path, port=port):
                page.goto(second_url)
                assert page.inner_text("#progress") == "dimension 2 of 5"
                second = answer_by_keyboard(page, "second label")
                press_until_focused(page, "Tab", "#stop")
                with page.expect_navigation():
                    page.keyboard.press("Enter")
                assert page.inner_text("h1") == "You stopped"

                page.go_back()
                assert page.url.rsplit("/", 1)[0].endswith("/dimension")
                assert "session has ended" in page.inner_text("main")
                assert "another participant" not in page.inner_text("main")
        finally:
            browser.close()

    with sqlite3.connect(study_path) as connection:
        rows = connection.execute("SELECT dimension, labels_json, kind FROM answers ORDER BY answered_at").fetchall()
    assert rows == [(first, '["first label"]', "semantic"), (second, '["second label"]', "semantic")]


@pytest.mark.browser
def test_long_labels_wrap_in_chromium(study_path, tmp_path):
    from playwright.sync_api import sync_playwright

    # The longest valid labels without a space: 100 letters, and 50 emoji
    # (the field's maxlength counts UTF-16 code units, two per emoji).
    long_labels = ["x" * 100, "\U0001f600" * 50]
    with Study(study_path) as study:
        for seed in range(3):
            participant, _ = study.add_participant(order_seed=seed)
            for dimension in study.dimensions:
                study.save_answer(participant.participant_id, dimension,
                                  Answer(labels=(f"{long_labels[0]}{seed}",), kind="visual", interpretability="one"))
    out = tmp_path / "summary"
    summarize([study_path], out, wordcloud_size=(300, 150))

    with running_server(study_path) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            open_first_dimension(page, base_url)
            for field, label in enumerate(long_labels, start=1):
                page.fill(f"#label-{field}", label)
            page.check("#kind-visual")
            page.check("#interpretability-one")
            page.click("#submit")
            page.goto(page.url.rsplit("/", 2)[0] + "/done")
            assert page.inner_text("#summary").count(long_labels[0]) == 1

            # Nothing is pushed beyond the window, so every "change" link stays in view.
            # The summary page's agreement table needs more than 600 pixels anyway.
            done_url = page.url
            for url, width in ((done_url, 1100), (done_url, 600), ((out / "summary.html").as_uri(), 1100)):
                page.set_viewport_size({"width": width, "height": 900})
                page.goto(url)
                scroll_width, client_width = page.evaluate(
                    "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
                )
                assert scroll_width <= client_width, (url, width)
        finally:
            browser.close()


#: JavaScript returning the x positions of the first and the last character of an element's text.
_FIRST_AND_LAST_X = """element => {
    const text = element.firstChild;
    const range = document.createRange();
    range.setStart(text, text.length - 1);
    range.setEnd(text, text.length);
    const last = range.getBoundingClientRect().x;
    range.setStart(text, 0);
    range.setEnd(text, 1);
    return [range.getBoundingClientRect().x, last];
}"""


@pytest.mark.browser
def test_right_to_left_labels_keep_punctuation_at_end(study_path):
    from playwright.sync_api import sync_playwright

    # In a left-to-right page, a Hebrew label's final "!" would be drawn to
    # the right of the word, which is where a Hebrew reader starts reading.
    label = "\u05e9\u05dc\u05d5\u05dd!"
    with running_server(study_path) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            open_first_dimension(page, base_url)
            dimension_url = page.url
            page.fill("#label-1", label)
            page.fill("#label-2", "red!")
            assert page.eval_on_selector("#label-1", "field => getComputedStyle(field).direction") == "rtl"
            assert page.eval_on_selector("#label-2", "field => getComputedStyle(field).direction") == "ltr"
            page.check("#kind-visual")
            page.check("#interpretability-one")
            page.click("#submit")

            page.goto(dimension_url)
            assert page.input_value("#label-1") == label
            assert page.eval_on_selector("#label-1", "field => getComputedStyle(field).direction") == "rtl"
            page.goto(dimension_url.rsplit("/", 2)[0] + "/done")
            tags = page.query_selector_all("td.labels .tag")
            assert [tag.inner_text() for tag in tags] == [label, "red!"]
            first_x, last_x = tags[0].evaluate(_FIRST_AND_LAST_X)
            assert last_x < first_x
            first_x, last_x = tags[1].evaluate(_FIRST_AND_LAST_X)
            assert last_x > first_x
        finally:
            browser.close()


@pytest.mark.browser
def test_longest_label_field_allows_saved_in_chromium(study_path):
    from playwright.sync_api import sync_playwright

    # U+0958 is one UTF-16 code unit, so maxlength="100" lets 100 of them
    # through, but NFC turns each into the two code points U+0915 U+093C.
    typed = "\u0958" * 101
    with running_server(study_path) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            open_first_dimension(page, base_url)
            page.locator("#label-1").press_sequentially(typed)
            assert page.eval_on_selector("#label-1", "field => field.value.length") == 100
            page.check("#kind-semantic")
            page.check("#interpretability-one")
            page.click("#submit")
            assert page.inner_text("#progress") == "dimension 2 of 5"
            assert page.locator("#error-labels").count() == 0
        finally:
            browser.close()
    with sqlite3.connect(study_path) as connection:
        rows = connection.execute("SELECT labels_json FROM answers").fetchall()
    assert [json.loads(row[0]) for row in rows] == [["\u0915\u093c" * 100]]


#: JavaScript returning the document's scroll width and the window's inner width.
_WIDTHS = "[document.documentElement.scrollWidth, window.innerWidth]"


@pytest.mark.browser
def test_pages_fit_phone_width(study_path):
    from playwright.sync_api import sync_playwright

    widths = {}
    with running_server(study_path) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 360, "height": 740})

            def measure(name: str) -> None:
                page.wait_for_load_state("load")
                widths[name] = tuple(page.evaluate(_WIDTHS))

            page.goto(base_url + "/")
            measure("start")
            page.goto(base_url + "/consent")
            measure("consent")
            page.check("#agree")
            page.click("#consent-submit")
            measure("instructions")
            page.click("#start")
            measure("dimension")
            page.fill("#label-1", "x" * 100)
            page.fill("#label-2", "a label with several words in it")
            page.click("#submit")
            measure("rejected answer")
            page.check("#kind-visual")
            page.check("#interpretability-several")
            page.click("#submit")
            page.goto(base_url + "/participant/1/done")
            measure("summary")
            page.goto(base_url + "/admin?token=admin-token")
            measure("admin")
            page.goto(base_url + "/participant/999/done")
            measure("error")
            page.goto(base_url + "/participant/1/next")
            page.click("#stop")
            measure("stopped")
            with Study(study_path) as study:
                study.set_closed(True)
            page.goto(base_url + "/consent")
            measure("closed")
        finally:
            browser.close()

    assert len(widths) == 10
    for name, (scroll_width, window_width) in widths.items():
        assert window_width == 360, name
        assert scroll_width <= window_width, name


@pytest.mark.browser
def test_stop_ends_copied_session_in_chromium(study_path):
    """A second browser with a copy of the cookie (browser sync, a shared computer) is logged out by Stop."""
    from playwright.sync_api import sync_playwright

    with running_server(study_path) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            own = browser.new_context()
            page = own.new_page()
            open_first_dimension(page, base_url)
            dimension_url = page.url
            copy = browser.new_context()
            copy.add_cookies(own.cookies())
            other = copy.new_page()
            other.goto(dimension_url)
            other.fill("#label-1", "typed in the copy")
            other.check("#kind-visual")
            other.check("#interpretability-one")

            page.click("#stop")
            page.wait_for_selector("#participant-code")
            stopped_heading = page.inner_text("h1")
            other.click("#submit")
            copy_heading = other.inner_text("h1")
            copy_text = other.inner_text("main") if other.query_selector("main") else other.content()
        finally:
            browser.close()

    assert stopped_heading == "You stopped"
    assert copy_heading == "403 Forbidden"
    assert "What you submitted was not saved." in copy_text
    with sqlite3.connect(study_path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 0
        assert connection.execute("SELECT session_version FROM participants").fetchall() == [(1,)]
    connection.close()


def pixels_shown_in_chromium(study_path: Path, index: int) -> dict:
    """Serve a study, open its first dimension in Chromium and read back the pixels of image ``index``.

    Returns:
        dict: ``width``, ``height`` and ``rgba``, the image's pixels as Chromium
        drew them on a canvas, row by row.
    """
    from playwright.sync_api import sync_playwright

    with running_server(study_path) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            open_first_dimension(page, base_url)
            page.wait_for_function(
                "() => Array.from(document.images).every(image => image.complete && image.naturalWidth > 0)"
            )
            return page.evaluate(
                """(index) => {
                    const image = Array.from(document.images).find(
                        candidate => new URL(candidate.src).pathname === `/image/${index}`);
                    const canvas = document.createElement("canvas");
                    canvas.width = image.naturalWidth;
                    canvas.height = image.naturalHeight;
                    const context = canvas.getContext("2d");
                    context.drawImage(image, 0, 0);
                    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
                    return {width: canvas.width, height: canvas.height, rgba: Array.from(data)};
                }""",
                index,
            )
        finally:
            browser.close()


@pytest.mark.browser
def test_decoded_webp_shown_exactly_in_chromium(tmp_path, labeling_run, image_set):
    """Chromium shows a decoded image, served as lossless WebP, with the pixels that load_rgb returns."""
    import numpy as np
    from PIL import Image

    from dimalign.features.decode import load_rgb
    from dimalign.interpret.grids import percentile_grid
    from dimalign.io.objects import read_object_table
    from dimalign.io.runs import load_embedding
    from dimalign.labeling.study import create_study

    images = tmp_path / "images"
    shutil.copytree(image_set[0], images)
    first = int(percentile_grid(load_embedding(labeling_run).embedding[:, 0])[0, 0])
    target = images / read_object_table(labeling_run / "objects.tsv").sources[first]
    pixels = np.random.default_rng(3).integers(0, 256, size=(40, 60, 4), dtype=np.uint8)
    Image.fromarray(pixels, mode="RGBA").save(target)
    study_path = create_study(tmp_path / "study.db", labeling_run, images, dims="0")
    expected = np.asarray(load_rgb(target))

    displayed = pixels_shown_in_chromium(study_path, first)

    rgba = np.asarray(displayed["rgba"], dtype=np.uint8).reshape(displayed["height"], displayed["width"], 4)
    assert (displayed["width"], displayed["height"]) == (60, 40)
    assert (rgba[:, :, 3] == 255).all()
    np.testing.assert_array_equal(rgba[:, :, :3], expected)


@pytest.mark.browser
@pytest.mark.parametrize("file_format", ["JPEG", "WEBP"])
def test_shrunk_jpeg_shown_in_chromium(tmp_path, labeling_run, image_set, shared_data, file_format):
    """Chromium shows a large lossy photo, served shrunk as a JPEG, within a few levels of load_rgb's pixels."""
    import numpy as np
    from PIL import Image

    from dimalign.features.decode import load_rgb
    from dimalign.interpret.grids import percentile_grid
    from dimalign.io.objects import read_object_table
    from dimalign.io.runs import load_embedding
    from dimalign.labeling.study import SERVED_IMAGE_SIDE, create_study

    images = tmp_path / "images"
    shutil.copytree(image_set[0], images)
    first = int(percentile_grid(load_embedding(labeling_run).embedding[:, 0])[0, 0])
    target = images / read_object_table(labeling_run / "objects.tsv").sources[first]
    with Image.open(shared_data / "images" / "owl.jpg") as photo:
        camera_profile = photo.info["icc_profile"]
        photo.resize((1600, 1200), Image.BICUBIC).save(
            target, format=file_format, quality=92, icc_profile=camera_profile
        )
    study_path = create_study(tmp_path / "study.db", labeling_run, images, dims="0")
    expected_image = load_rgb(target)
    expected_image.thumbnail((SERVED_IMAGE_SIDE, SERVED_IMAGE_SIDE))
    expected = np.asarray(expected_image, dtype=np.int16)

    displayed = pixels_shown_in_chromium(study_path, first)

    rgba = np.asarray(displayed["rgba"], dtype=np.int16).reshape(displayed["height"], displayed["width"], 4)
    difference = np.abs(rgba[:, :, :3] - expected)
    assert (displayed["width"], displayed["height"]) == (512, 384)
    # Quality 95 JPEG changed shrunk photos by 1.3 levels on average and 22 at most.
    assert float(difference.mean()) < 2.0
    assert int(difference.max()) <= 32
