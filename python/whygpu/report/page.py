"""The page: the sections of the report in order, numbered, rendered and written to disk."""

from __future__ import annotations

from pathlib import Path

from . import bench, explain, glossary, gpu, intro, ladder, machine, roofline, scaleout, scaling, split, training
from ._format import Block, Docs, Section
from .load import ResultsError
from .render import _to_html, _to_markdown

# The story, in page order: (a section module's ``section``, whether it is numbered).
# A section returns [] when its results are absent; a numbered one that returns
# blocks takes the next number.  Adding a section is adding a module and a line here.
SECTIONS: tuple[tuple[Section, bool], ...] = (
    (intro.section, False),
    (ladder.section, True),
    (roofline.section, True),
    (scaling.section, True),
    (training.section, True),
    (gpu.section, True),  # one device first, all the way to the GPU ...
    (scaleout.section, True),  # ... then many of them
    (split.section, True),  # ... and the model itself split over them
    (explain.section, True),
    (bench.section, True),
    (machine.section, False),
)


def build_report(docs: Docs, out_dir, *, extra_blocks: list[Block] | None = None) -> dict:
    """Write the figures, report.md and report.html into out_dir (created if
    needed) from {kind: document} (see :func:`load_results`).  Returns
    {"html": path, "markdown": path, "figures": [paths]}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not docs:
        raise ResultsError("nothing to report")
    figs: list[str] = []
    blocks: list[Block] = []
    num = 1
    for section, numbered in SECTIONS:
        got = section(docs, out, figs, num)
        blocks += got
        if numbered and got:
            num += 1
    if extra_blocks:
        blocks += extra_blocks
    # the words used, before the machine's description (the last, unnumbered section)
    at = next((i for i, b in enumerate(blocks) if b[0] == "h2" and b[1] == machine.TITLE), len(blocks))
    blocks[at:at] = glossary.section(blocks)
    md = out / "report.md"
    md.write_text(_to_markdown(blocks))
    page = out / "report.html"
    page.write_text(_to_html(blocks, out, "whygpu report"))
    return {"html": str(page), "markdown": str(md), "figures": figs}
