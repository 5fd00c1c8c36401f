"""What the notebook-lab tests share (issue 36): which notebooks are labs, their exercise cells, their reference
solutions and planted wrong answers (``notebooks/solutions/<notebook>.py``), and the claims a markdown cell may
not make.

A lab notebook's exercise cell is a code cell whose metadata holds ``"exercise": "<id>"``; it ships with ``...``
where the student's answer goes and ends by calling ``lab.check("<id>", ...)``.  Its solutions file holds, for
each exercise, the cell's code with the answer filled in and with a wrong answer planted::

    # %% 01.loop_order
    <the exercise cell, solved>
    # %% wrong 01.loop_order
    <the exercise cell with a wrong answer>
"""

from __future__ import annotations

import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOLUTIONS = NOTEBOOKS / "solutions"
MAX_MINUTES = 50


def lab_notebooks() -> list[pathlib.Path]:
    """The notebooks that are labs: those with a solutions file."""
    return sorted(p for p in NOTEBOOKS.glob("*.ipynb") if (SOLUTIONS / f"{p.stem}.py").is_file())


def load(path: pathlib.Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def exercise_cells(nb: dict) -> dict[str, int]:
    """Exercise id -> the index of its cell."""
    return {c["metadata"]["exercise"]: i for i, c in enumerate(nb["cells"]) if "exercise" in c.get("metadata", {})}


def solutions(path: pathlib.Path) -> tuple[dict[str, str], dict[str, str]]:
    """(solved, wrong): exercise id -> the cell's code, from a solutions file."""
    solved: dict[str, str] = {}
    wrong: dict[str, str] = {}
    current: tuple[dict[str, str], str] | None = None
    lines: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines() + ["# %% end"]:
        m = re.match(r"^# %% (wrong )?(\S+)\s*$", line)
        if m:
            if current is not None:
                current[0][current[1]] = "\n".join(lines).strip("\n") + "\n"
            current = (wrong if m.group(1) else solved, m.group(2)) if m.group(2) != "end" else None
            lines = []
        elif current is not None:
            lines.append(line)
    return solved, wrong


def text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


# ---- Claims a markdown cell may not make --------------------------------------------------------------------------

# A figure that a run measures: a number with a unit of time, speed, size or ratio, or a multiplier (x6, 6x, x6,207).
FIGURE = re.compile(
    r"(?<![\w.])(\d[\d,]*(\.\d+)?\s*(%|percent|ms|µs|us|ns|seconds?|GFLOP/s|TFLOP/s|GFLOPS|GB/s|MB/s|"
    r"times (faster|slower|more|less))(?![\w])|(?<![\w])[x×]\s?\d[\d,.]*|\d[\d,.]*\s?[x×](?![\w]))",
    re.IGNORECASE,
)
# A ranking or a speed-up stated as a fact.
COMPARATIVE = re.compile(
    r"\b(faster|slower|quicker|fastest|slowest|outperforms?|beats?|speeds? up|speed-?ups? of|"
    r"almost in proportion|in proportion)\b",
    re.IGNORECASE,
)
# What holds on every machine, or is not a claim: a question (a "predict" prompt), code and math, the lab's time.
_STRIP = [
    re.compile(r"`[^`]*`"),  # inline code
    re.compile(r"\$[^$]*\$"),  # math
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"\b\d+\s*minutes\b", re.IGNORECASE),  # the lab's time
    re.compile(r"\b(19|20)\d\d\b"),  # years in citations
]


def claims(markdown: str) -> list[str]:
    """The sentences of a markdown cell that state a figure or a ranking the run could contradict; a question
    (a prompt to predict) and what sits in code or math are not claims."""
    found = []
    for block in re.split(r"\n\s*\n", markdown):
        for sentence in re.split(r"(?<=[.!?])\s+|\n[-*] ", block):
            s = sentence.strip()
            if not s or s.endswith("?") or s.startswith(">"):
                continue
            bare = s
            for pat in _STRIP:
                bare = pat.sub(" ", bare)
            if FIGURE.search(bare) or COMPARATIVE.search(bare):
                found.append(s)
    return found
