"""The HTML report in a real browser (Debian Chromium via Playwright), offline: it renders its
plots from the file alone, and a screenshot is kept for the README and for review."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from loadtest.report import write_report
from loadtest.summary import summarise
from tests.loadtest.helpers import synthetic_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="apt-get install chromium")]


async def test_report_renders_offline_with_its_plots(tmp_path: Path, artifacts_dir: Path
                                                     ) -> None:
    _, html_path = write_report(summarise(synthetic_run(leak_on=2)), tmp_path)
    requests: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=["--no-sandbox", "--no-first-run"])
        try:
            page = await browser.new_page(viewport={"width": 1240, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            await page.goto(html_path.as_uri())
            await page.screenshot(path=str(artifacts_dir / "loadtest-report.png"),
                                  full_page=True)
            title = await page.text_content("h1")
            problems = await page.text_content("#problems")
            boxes = [await svg.bounding_box() for svg in await page.query_selector_all("svg")]
            lines = await page.eval_on_selector_all("polyline", "els => els.length")
        finally:
            await browser.close()
    assert requests == [html_path.as_uri()]  # nothing fetched beyond the file itself
    assert title is not None and "FAIL" in title and "synthetic" in title
    assert problems is not None
    assert "leak (tone energy or digits) on 1 of 4 calls checked" in problems
    assert len(boxes) == 6 and all(b is not None and b["width"] > 300 for b in boxes)
    assert lines == 8  # two CDF curves, two over time, CPU, CPU wait, calls up, RSS
