"""The HTML report in a real browser: what a teacher projects (1280 px wide) and what a
student opens on a phone (390 px).  Headless Chromium loads the report of one
``whygpu demo --quick`` (the session's ``demo_dir``) and checks that every figure
loads, nothing is logged to the console as an error, no table runs off a 1280-px
page, and at 390 px the page does not scroll sideways (wide tables scroll in their
own box).  When a check fails, a screenshot is kept next to the report
(``report-browser-<width>.png``) for CI to keep as an artefact.

Skipped, with the reason, where no Chromium is installed (Debian: ``apt install
chromium``); ``.ci/run`` installs it and sets WHYGPU_REQUIRE_BROWSER=1, so there the
test fails instead of being skipped.
"""

from __future__ import annotations

import os

import pytest

from ._browser import Browser, find_browser

BROWSER = find_browser()
if BROWSER is None:
    if os.environ.get("WHYGPU_REQUIRE_BROWSER"):
        raise RuntimeError("WHYGPU_REQUIRE_BROWSER is set but no chromium is installed")
    pytest.skip(
        "no Chromium-family browser on PATH (Debian: apt install chromium), so the report is not checked "
        "in a browser here",
        allow_module_level=True,
    )

# What the page looks like to the checks, read in the browser.
LAYOUT_JS = """(() => {
  const doc = document.documentElement;
  const tables = Array.from(document.querySelectorAll('table')).map(t => {
    const r = t.getBoundingClientRect();
    const box = t.parentElement;
    return {right: r.right, width: r.width, box_scrolls: getComputedStyle(box).overflowX,
            box_right: box.getBoundingClientRect().right};
  });
  return {
    images: Array.from(document.images).map(i => ({complete: i.complete, natural: i.naturalWidth,
                                                   shown: i.getBoundingClientRect().width})),
    figures: document.querySelectorAll('figure').length,
    page_width: doc.clientWidth,
    scroll_width: doc.scrollWidth,
    tables: tables,
    viewport_meta: !!document.querySelector('meta[name=viewport]'),
    font_px: parseFloat(getComputedStyle(document.body).fontSize),
  };
})()"""


@pytest.fixture(scope="module")
def page(demo_dir):
    html = demo_dir / "report.html"
    assert html.exists(), "the demo wrote no report.html"
    with Browser(BROWSER) as b:
        yield b, html


def _check(b, html, width: int, problems: list[str]) -> None:
    """Screenshot next to the report when there are problems, then fail with all of them."""
    if problems:
        shot = b.screenshot(html.parent / f"report-browser-{width}.png")
        pytest.fail(f"at {width} px: " + "; ".join(problems) + f" (screenshot: {shot})")


@pytest.mark.parametrize("width", [1280, 390])
def test_the_report_reads_in_a_browser(page, width):
    b, html = page
    b.events.clear()
    b.open(html.as_uri(), width)
    got = b.evaluate(LAYOUT_JS)
    problems = []
    if got["figures"] == 0:
        problems.append("no figure on the page")
    for i, img in enumerate(got["images"], 1):
        if not (img["complete"] and img["natural"] > 0):
            problems.append(f"image {i} did not load")
        elif img["shown"] > got["page_width"] + 0.5:
            problems.append(f"image {i} is wider ({img['shown']:.0f} px) than the page")
    errors = b.console_errors()
    if errors:
        problems.append(f"console errors: {errors[:3]}")
    if got["scroll_width"] > got["page_width"]:
        problems.append(f"the page scrolls sideways ({got['scroll_width']} px of content in {got['page_width']})")
    for i, t in enumerate(got["tables"], 1):
        if width >= 1280 and t["right"] > got["page_width"] + 0.5:
            problems.append(f"table {i} runs off the page (right edge {t['right']:.0f} px)")
        if t["right"] > t["box_right"] + 0.5 and t["box_scrolls"] not in ("auto", "scroll"):
            problems.append(f"table {i} overflows its column and its box does not scroll")
    if width < 600:
        if not got["viewport_meta"]:
            problems.append("no <meta name=viewport>: a phone shows the page at desktop width, tiny")
        if got["font_px"] < 14:
            problems.append(f"body text {got['font_px']} px: too small on a phone")
    _check(b, html, width, problems)


def test_the_checks_can_fail(page, tmp_path):
    """A page with a broken image, a console error and a wide table fails each check (and gets
    its screenshot): the test above is not vacuous."""
    b, _ = page
    bad = tmp_path / "bad.html"
    cells = "".join(f"<td>column-{i}-with-a-long-heading</td>" for i in range(40))
    bad.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
        "<figure><img src='missing.png'></figure><table><tr>" + cells + "</tr></table>"
        "<script>console.error('planted error')</script></body></html>"
    )
    b.events.clear()
    b.open(bad.as_uri(), 1280)
    got = b.evaluate(LAYOUT_JS)
    assert got["images"] and got["images"][0]["natural"] == 0
    assert any("planted error" in e for e in b.console_errors())
    assert got["tables"][0]["right"] > got["page_width"]
    assert got["scroll_width"] > got["page_width"]
    shot = b.screenshot(tmp_path / "bad.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
