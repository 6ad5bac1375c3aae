"""`report.html` of a tiny study in a real browser: no console errors, every figure decoded,
every table there."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from tests.browser.chrome import console_errors

pytestmark = pytest.mark.slow


class TagCounter(HTMLParser):
    """How many <img> and <table> the file itself holds."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = {"img": 0, "table": 0}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.counts:
            self.counts[tag] += 1


def test_report_html_opens_with_every_figure_decoded_and_every_table_present(
    study, browser, artifacts_dir
):
    page = study / "reports" / "tiny" / "report.html"
    counter = TagCounter()
    counter.feed(page.read_text())
    assert counter.counts["img"] > 0 and counter.counts["table"] > 0

    browser.get(page.as_uri())
    browser.execute_script(
        "return Promise.all([...document.images].map(i => i.decode().catch(() => null)))")
    images = browser.execute_script(
        "return [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight,"
        " i.getAttribute('src').slice(0, 30)])")
    assert len(images) == counter.counts["img"]
    undecoded = [src for complete, width, height, src in images
                 if not (complete and width > 0 and height > 0)]
    assert undecoded == []

    rows = browser.execute_script(
        "return [...document.querySelectorAll('table')].map(t => t.querySelectorAll('tr').length)")
    assert len(rows) == counter.counts["table"]
    assert min(rows) >= 2  # a header and at least one row each

    browser.save_screenshot(str(artifacts_dir / "report_html.png"))
    assert console_errors(browser) == []
