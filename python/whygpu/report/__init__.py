"""The report: the measurements of ``whygpu`` turned into a short lesson.

:func:`build_report` takes the JSON documents the subcommands write (and
pytest-benchmark's JSON), draws the figures, and writes ``report.md`` (next
to the PNG files) and a self-contained ``report.html`` (figures embedded as
base64).  Every caption is written from the numbers of the run -- nothing
here is canned except the explanations of *why*.

A report is a list of blocks (heading, paragraph, figure, table, list),
rendered twice, to Markdown and to HTML.  One module per part of it:

- ``load``: reading result files (:func:`load_results`, :func:`classify`);
- ``_format``: the ``Block`` type, the ``section`` signature, number formats;
- one module per section of the story, in page order: ``intro``, ``ladder``,
  ``roofline``, ``scaling``, ``training``, ``gpu`` (with ``tensor_cores``),
  ``scaleout`` (with ``scaleout_predicted``: the held-out validation's table and
  timelines, the extrapolation's sources), ``split`` (splitting the model: tensor
  and pipeline parallelism), ``explain``, ``bench``, ``machine`` --
  each exposes ``section(docs, out, figs, num) -> blocks``;
- ``render``: blocks to Markdown and HTML;
- ``page``: the list of sections, and :func:`build_report`.
"""

from __future__ import annotations

from .gpu import GPU_PUBLIC as GPU_PUBLIC  # re-exported: the public figures the GPU section quotes
from .load import ResultsError, classify, load_results
from .page import build_report

__all__ = ["build_report", "load_results", "classify", "ResultsError"]
