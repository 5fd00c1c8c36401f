"""The notebooks as labs (issue 36), for every notebook with a solutions file (tests/_labs.py):

* static: it states its goal and its time (50 minutes at most), holds 3 or more exercises, each shipped with
  ``...`` and a ``lab.check`` call, each with a reference solution and a planted wrong answer; no markdown cell
  states a figure or a ranking the run could contradict;
* executed twice (nbclient): once with half the exercises solved and the other half wrong, once the other way
  round, so that every exercise's check is seen to pass on its solution and to fail on its wrong answer.
  CI runs this in its notebooks stage, where nbclient is installed (WHYGPU_REQUIRE_NBCLIENT=1 there: no skip).

The whygpu.lab checker itself is tested in tests/test_lab.py.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from ._labs import MAX_MINUTES, claims, exercise_cells, lab_notebooks, load, solutions, text

NOTEBOOKS = lab_notebooks()
ids = [p.stem for p in NOTEBOOKS]


def test_some_notebooks_are_labs():
    assert NOTEBOOKS, "no notebook has a solutions file in notebooks/solutions/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_a_lab_states_its_goal_time_and_exercises(path):
    nb = load(path)
    intro = text(nb["cells"][0])
    assert re.search(r"\*\*Goal", intro), f"{path.name}: the first cell states the learning goal (**Goal:** ...)"
    minutes = re.search(r"\*\*Time:?\*\*:?\s*(?:about\s*)?(\d+)\s*minutes", intro)
    assert minutes and int(minutes.group(1)) <= MAX_MINUTES, f"{path.name}: **Time:** N minutes (N <= 50)"
    cells = exercise_cells(nb)
    assert len(cells) >= 3, f"{path.name}: {len(cells)} exercises; a lab has 3 or more"
    solved, wrong = solutions(path.parent / "solutions" / f"{path.stem}.py")
    for ex, i in cells.items():
        src = text(nb["cells"][i])
        assert "..." in src, f"{path.name} {ex}: the shipped cell leaves the answer as ..."
        assert f'lab.check("{ex}"' in src, f"{path.name} {ex}: the cell calls lab.check({ex!r}, ...)"
        assert ex in solved and ex in wrong, f"{path.name} {ex}: a solution and a wrong answer in solutions/"
        assert f'lab.check("{ex}"' in solved[ex] and f'lab.check("{ex}"' in wrong[ex]
    assert set(solved) == set(cells), (
        f"{path.name}: solutions for exercises the notebook lacks: {set(solved) - set(cells)}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_no_markdown_cell_states_what_the_run_could_contradict(path):
    nb = load(path)
    found = [(i, s) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown" for s in claims(text(c))]
    assert not found, f"{path.name}: markdown that states a figure or a ranking (compute it in code instead): {found}"


def test_the_claim_finder_sees_what_issue_36_found():
    """The sentences the issue quoted are caught; questions, code and math are not claims."""
    assert claims("Each rung one idea faster.")
    assert claims("That is x6,207 over pure Python.")
    assert claims("Make it faster and training gets faster almost in proportion.")
    assert claims("It takes 148 ms on 2 ranks.")
    assert not claims("Predict: which rung will be faster?")
    assert not claims("Run `whygpu ladder --sizes 512` and read the table.")
    assert not claims("**Time:** 45 minutes.")


def _run(path, cells: dict[str, str], record: str) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(str(path), as_version=4)
    for c in nb.cells:
        ex = c.get("metadata", {}).get("exercise")
        if ex in cells:
            c.source = cells[ex]
    old = os.environ.get("WHYGPU_LAB_RECORD")
    os.environ["WHYGPU_LAB_RECORD"] = record
    try:
        nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
    finally:
        if old is None:
            os.environ.pop("WHYGPU_LAB_RECORD", None)
        else:
            os.environ["WHYGPU_LAB_RECORD"] = old


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_each_check_passes_its_solution_and_fails_its_wrong_answer(path, tmp_path):
    if os.environ.get("WHYGPU_REQUIRE_NBCLIENT") != "1":
        pytest.importorskip("nbclient")
    solved, wrong = solutions(path.parent / "solutions" / f"{path.stem}.py")
    order = sorted(exercise_cells(load(path)))
    seen: dict[str, set[str]] = {ex: set() for ex in order}
    for flip in (0, 1):
        cells = {ex: (solved if (k + flip) % 2 == 0 else wrong)[ex] for k, ex in enumerate(order)}
        record = tmp_path / f"run{flip}.jsonl"
        _run(path, cells, str(record))
        for line in record.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            expect = "pass" if (order.index(r["exercise"]) + flip) % 2 == 0 else "fail"
            assert r["status"] == expect, f"{path.name} {r['exercise']}: {r['status']}, not {expect}: {r['message']}"
            seen[r["exercise"]].add(r["status"])
    assert all(s == {"pass", "fail"} for s in seen.values()), f"{path.name}: checks not seen both ways: {seen}"
