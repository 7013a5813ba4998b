"""The report in headless Chromium: offline, without console errors, with a working dimension browser."""

from __future__ import annotations

import pytest
from report_helpers import open_report

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:the chosen ridge penalty")]


def check_dimension_browser(page) -> None:
    """Select another dimension, then step with the buttons, checking that the panel follows."""
    title = page.locator("#dimension-title")
    figure = page.locator("#dimension-figure")
    first_title = title.text_content()
    first_figure = figure.get_attribute("src")
    assert first_title.startswith("human dimension 0")
    assert first_figure.startswith("data:image/png;base64,")

    # The alternative text describes the dimension shown, not a fixed phrase.
    assert figure.get_attribute("alt") == f"Top objects of {first_title}"

    page.select_option("#dimension-select", "dnn-1")
    assert title.text_content().startswith("DNN dimension 1")
    assert figure.get_attribute("alt") == f"Top objects of {title.text_content()}"
    assert figure.get_attribute("src") != first_figure
    assert page.locator("#dimension-objects li").count() > 0

    page.click("#dimension-next")
    assert title.text_content().startswith("DNN dimension 2")
    assert page.locator("#dimension-select").input_value() == "dnn-2"
    page.click("#dimension-previous")
    page.click("#dimension-previous")
    assert title.text_content().startswith("DNN dimension 0")
    # The figures really decoded: every image has a natural width.
    widths = page.eval_on_selector_all("img", "images => images.map(image => image.naturalWidth)")
    assert widths and all(width > 0 for width in widths)


def test_tiny_report_in_chromium(tiny_study, tmp_path):
    from playwright.sync_api import sync_playwright

    report = tiny_study / "report" / "report.html"
    with sync_playwright() as playwright:
        browser, page, failed, errors, requests = open_report(playwright, report)
        try:
            assert failed == []
            assert errors == []
            assert requests == [report.resolve().as_uri()]
            assert page.locator("section.figure img").count() == 4
            check_dimension_browser(page)
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000
