"""whygpu.lab: the checker a student calls from a notebook's exercise (issue 36).

    from whygpu import lab
    lab.check("01.loop_order", my_matmul)          # ✓ right, with why; ✗ what is wrong, with a hint

Each exercise has an id, ``"<notebook>.<name>"`` (``"01.loop_order"``), registered by the module of its
notebook (``whygpu.lab.nb01`` for notebook 01, imported the first time one of its exercises is checked).  A
check prints one line and returns True (right), False (wrong) or None (not answered yet: the answer is still
``...``, the placeholder the notebook ships with).  It never raises for a wrong answer -- a student's mistake is
a message, not a traceback -- but it does for an exercise id that does not exist.

Where the environment variable ``WHYGPU_LAB_RECORD`` names a file, every check appends one JSON line to it
(``{"exercise": ..., "status": "pass" | "fail" | "unanswered", "message": ...}``): the tests that execute each
notebook with its reference solutions (``notebooks/solutions/``), and again with wrong answers planted, read it.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Exercise", "Verdict", "check", "exercise", "exercises", "RECORD_ENV"]

RECORD_ENV = "WHYGPU_LAB_RECORD"


@dataclass(frozen=True)
class Verdict:
    """What a checker found: ``ok``, and a sentence saying why (right: what it shows; wrong: what is off)."""

    ok: bool
    message: str


@dataclass(frozen=True)
class Exercise:
    """One exercise: its id, what it asks in a line, the function that judges an answer, and a hint."""

    id: str
    title: str
    judge: Callable[..., Verdict]  # judge(answer, **given) -> Verdict
    hint: str


_EXERCISES: dict[str, Exercise] = {}


def exercise(id: str, title: str, hint: str) -> Callable[[Callable[..., Verdict]], Callable[..., Verdict]]:
    """Register the decorated function as the judge of exercise ``id`` (used by ``whygpu.lab.nbNN``)."""

    def register(judge: Callable[..., Verdict]) -> Callable[..., Verdict]:
        if id in _EXERCISES:
            raise ValueError(f"exercise {id!r} is registered twice")
        _EXERCISES[id] = Exercise(id, title, judge, hint)
        return judge

    return register


def _load(id: str) -> Exercise:
    if not isinstance(id, str) or "." not in id:
        raise ValueError(f"an exercise id looks like '01.loop_order' (notebook.name), got {id!r}")
    if id not in _EXERCISES:
        notebook = id.split(".", 1)[0]
        try:
            importlib.import_module(f"{__name__}.nb{notebook}")
        except ModuleNotFoundError:
            pass
    if id not in _EXERCISES:
        known = ", ".join(sorted(k for k in _EXERCISES if k.startswith(id.split(".", 1)[0] + "."))) or "none"
        raise ValueError(f"no exercise {id!r}; this notebook's exercises: {known}")
    return _EXERCISES[id]


def exercises(notebook: str) -> list[Exercise]:
    """The exercises of a notebook (``"01"``), in the order they were registered."""
    try:
        importlib.import_module(f"{__name__}.nb{notebook}")
    except ModuleNotFoundError:
        return []
    return [e for k, e in _EXERCISES.items() if k.startswith(notebook + ".")]


def check(id: str, answer: Any = ..., **given: Any) -> bool | None:
    """Judge ``answer`` to exercise ``id`` (with whatever the exercise needs besides, as keywords) and print
    one line: ✓ and why it is right, ✗ and what is wrong with a hint, or that it is not answered yet."""
    ex = _load(id)
    if answer is ... or answer is None:
        status, ok, text = "unanswered", None, f"… {id}: not answered yet -- replace the ... and run the cell again"
    else:
        try:
            verdict = ex.judge(answer, **given)
        except Exception as e:  # the student's code raised inside the judge: that is a wrong answer, not a crash
            verdict = Verdict(False, f"running your answer raised {type(e).__name__}: {e}")
        ok = verdict.ok
        status = "pass" if ok else "fail"
        text = f"✓ {id}: {verdict.message}" if ok else f"✗ {id}: {verdict.message}  Hint: {ex.hint}"
    print(text)
    _record(id, status, text)
    return ok


def _record(id: str, status: str, message: str) -> None:
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"exercise": id, "status": status, "message": message}) + "\n")
