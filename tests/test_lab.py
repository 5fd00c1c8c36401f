"""whygpu.lab.check (issue 36): right, wrong, unanswered, a raising answer, an unknown id, and the record the
notebook tests read."""

from __future__ import annotations

import json

import pytest

from whygpu import lab


@lab.exercise("99.square", "square a number", hint="multiply it by itself")
def _square(answer, x):
    return lab.Verdict(answer(x) == x * x, f"{x} squared is {x * x}")


def test_a_right_answer_passes_and_says_why(capsys):
    assert lab.check("99.square", lambda v: v * v, x=3) is True
    assert capsys.readouterr().out.startswith("✓ 99.square: 3 squared is 9")


def test_a_wrong_answer_fails_with_a_hint(capsys):
    assert lab.check("99.square", lambda v: v + v, x=3) is False
    out = capsys.readouterr().out
    assert out.startswith("✗ 99.square:") and "Hint: multiply it by itself" in out


def test_an_answer_that_raises_is_wrong_not_a_crash(capsys):
    assert lab.check("99.square", lambda v: 1 / 0, x=3) is False
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_the_placeholder_is_not_answered_yet(capsys):
    assert lab.check("99.square", ..., x=3) is None
    assert "not answered yet" in capsys.readouterr().out


def test_an_unknown_exercise_is_an_error():
    with pytest.raises(ValueError, match="no exercise '99.cube'"):
        lab.check("99.cube", 1)
    with pytest.raises(ValueError, match="notebook.name"):
        lab.check("cube", 1)


def test_every_check_is_recorded_where_asked(tmp_path, monkeypatch):
    path = tmp_path / "record.jsonl"
    monkeypatch.setenv(lab.RECORD_ENV, str(path))
    lab.check("99.square", lambda v: v * v, x=2)
    lab.check("99.square", lambda v: v, x=2)
    lab.check("99.square", ...)
    got = [json.loads(line)["status"] for line in path.read_text().splitlines()]
    assert got == ["pass", "fail", "unanswered"]
