"""The command line's rough edges a student meets (issue 26): help that says what the
arguments are, a command where nothing asked for can run exits non-zero and says why,
an unknown kernel lists the usable ones first, messages speak in flags, an interrupted
or failed run leaves no half-written report folder, and the ladder shows its progress
bar before it measures anything.  In-process through ``whygpu.cli.main``; timings are
planted or not looked at, so nothing here depends on the machine's speed."""

from __future__ import annotations

import pytest

import whygpu
from whygpu.bench.measure import PLANT_ENV
from whygpu.cli import main

from ._support import replace_kernel

PLANTED_WHY = "planted for the test: not built here"


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_explain_help_says_what_m_n_k_and_dtype_are(capsys):
    rc, out, err = run(["explain", "--help"], capsys)
    assert rc == 0
    out = " ".join(out.split())
    assert "rows of A and of C" in out and "columns of B and of C" in out and "columns of A = rows of B" in out
    assert "float64 (8 bytes" in out  # --dtype has a help text


def test_explain_with_nothing_that_can_run_exits_2_and_says_why(tmp_path, capsys, monkeypatch):
    replace_kernel(monkeypatch, "naive", unavailable=lambda: PLANTED_WHY)
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(["explain", "8", "8", "8", "--kernels", "naive"], capsys)
    assert rc == 2
    assert "none of the kernels asked for can run here" in err and PLANTED_WHY in err
    assert not list(tmp_path.iterdir())  # no report folder for a command that did nothing


def test_explain_with_one_usable_kernel_still_runs(tmp_path, capsys, monkeypatch):
    replace_kernel(monkeypatch, "naive", unavailable=lambda: PLANTED_WHY)
    rc, out, err = run(["explain", "8", "8", "8", "--kernels", "naive,packed", "--no-measure"], capsys)
    assert rc == 0, err
    assert "packed" in out and PLANTED_WHY in out


def test_unknown_kernel_lists_the_usable_ones_then_the_others_with_why(capsys, monkeypatch):
    replace_kernel(monkeypatch, "blocked", unavailable=lambda: PLANTED_WHY)
    rc, out, err = run(["ladder", "--kernels", "nope"], capsys)
    assert rc == 2
    usable, _, rest = err.partition("; these ")
    assert "kernels usable here: python, cython, naive, reordered, packed" in usable
    assert "blocked" not in usable and PLANTED_WHY in rest and "blocked" in rest


def test_a_skip_for_the_budget_is_explained_in_flags(tmp_path, capsys, monkeypatch):
    # 1 MFLOP/s planted: 2 x 200^3 = 16 MFLOP takes ~16 s, over a 0.05 s budget on any machine
    monkeypatch.setenv(PLANT_ENV, "python=0.001")
    rc, out, err = run(
        ["explain", "200", "200", "200", "--kernels", "python", "--budget", "0.05", "--out", tmp_path], capsys
    )
    assert rc == 0, err
    assert "over the budget" in out and "--all measures" in err
    assert "force=True" not in out + err  # the Python API's word, not the command line's


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_an_interrupted_demo_leaves_no_half_written_folder(tmp_path, capsys, monkeypatch):
    """The demo writes info.json first; Ctrl-C during the ladder must not leave that folder
    behind looking like a report (and the user is told)."""
    import whygpu.bench.ladder

    monkeypatch.setattr(whygpu.bench.ladder, "run_ladder", _interrupt)
    out_dir = tmp_path / "report"
    rc, out, err = run(["demo", "--quick", "--out", out_dir, "--no-progress"], capsys)
    assert rc == 130 and "interrupted" in err
    assert not out_dir.exists()
    assert f"removed the unfinished output folder {out_dir}" in err


def test_a_failed_command_keeps_a_folder_that_was_there_before(tmp_path, capsys, monkeypatch):
    import whygpu.bench.ladder

    keep = tmp_path / "mine.txt"
    keep.write_text("the user's own file")
    monkeypatch.setattr(whygpu.bench.ladder, "run_ladder", _interrupt)
    rc, out, err = run(["ladder", "--sizes", "8", "--out", tmp_path], capsys)
    assert rc == 130
    assert keep.read_text() == "the user's own file" and "removed" not in err


def test_the_ladder_shows_progress_before_it_measures_anything(tmp_path, capsys, monkeypatch):
    """The bar is up before the first calibration (the peaks and calibrations take seconds
    before the first size on a slow machine): checked at that call, not by the clock."""
    import whygpu.bench.ladder as ladder

    seen = []
    real = ladder.calibrate

    def calibrate(*args, **kwargs):
        if not seen:
            seen.append(capsys.readouterr().err)
        return real(*args, **kwargs)

    monkeypatch.setattr(ladder, "calibrate", calibrate)
    rc, out, err = run(
        ["ladder", "--sizes", "8", "--kernels", "packed", "--no-numpy", "--repeats", "1", "--progress"]
        + ["--out", tmp_path],
        capsys,
    )
    assert rc == 0
    assert seen and "ladder" in seen[0] and "calibrating" in seen[0]


@pytest.mark.skipif("openmp" not in whygpu.available_kernels(), reason="built without OpenMP")
def test_the_progress_bar_names_the_peak_measurement(tmp_path, capsys, monkeypatch):
    import whygpu.bench.ladder as ladder

    seen = []
    real = ladder.fma_peaks

    def fma_peaks(*args, **kwargs):
        seen.append(capsys.readouterr().err)
        return real(*args, **kwargs)

    monkeypatch.setattr(ladder, "fma_peaks", fma_peaks)
    rc, out, err = run(
        ["ladder", "--sizes", "8", "--kernels", "openmp", "--no-numpy", "--repeats", "1", "--progress"]
        + ["--out", tmp_path],
        capsys,
    )
    assert rc == 0
    assert seen and "FMA peak" in seen[0]


def test_the_report_climbs_one_device_before_many(demo_dir):
    """The story's order: the CPU rungs, threads, training, the GPU, only then more than one machine, and last
    the model split over them."""
    heads = [line for line in (demo_dir / "report.md").read_text().splitlines() if line.startswith("## ")]
    gpu = [i for i, h in enumerate(heads) if "GPU" in h]
    many = [i for i, h in enumerate(heads) if "More than one machine" in h]
    split = [i for i, h in enumerate(heads) if "Splitting the model" in h]
    assert gpu and many and max(gpu) < min(many), heads
    assert split and min(split) > max(many), heads
    numbered = [h.split(".")[0] for h in heads if h[3].isdigit()]
    assert numbered == [f"## {i}" for i in range(1, len(gpu) + len(many) + len(split) + 5)]


def test_the_reports_jargon_is_linked_to_a_glossary_of_the_words_it_uses(demo_dir, tmp_path):
    import re

    from whygpu.report import build_report, load_results
    from whygpu.report.glossary import TERMS

    res = build_report(load_results([demo_dir]), tmp_path)
    html = (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    links = re.findall(r"<a class='term' href='#g-(\w+)'", html)
    entries = re.findall(r"<dt id='g-(\w+)'>", html)
    assert links and len(links) == len(set(links))  # each term linked once: at its first use
    assert set(links) == set(entries)  # every link has its entry, every entry is used on the page
    words = md.split("## Words used in this report")
    assert len(words) == 2 and "## The machine" in words[1]  # the glossary sits just before the machine
    body = words[0]
    for slug, term, _, _ in TERMS:  # the terms the issue names, wherever this page uses them
        if slug in ("tlb", "rfo", "goto") and term.split("/")[0].split()[0] in body:
            assert slug in entries, term
    assert res["html"]


def test_the_glossary_lists_only_the_words_on_the_page():
    from whygpu.report.glossary import link_first_uses, section

    blocks = [("h2", "1. TLB"), ("p", "The TLB misses; SIMD lanes, SIMD again."), ("ul", ["STREAM triad"])]
    (_, (_, gl)) = section(blocks)
    assert [slug for slug, _, _ in gl] == ["simd", "stream", "tlb"]  # glossary order; not the heading's word
    linked: set[str] = set()
    first = link_first_uses("SIMD lanes and SIMD again, AVX2 too", linked)
    assert first.count("<a ") == 2 and first.count("href='#g-simd'") == 1 and "href='#g-isa'" in first
    assert link_first_uses("SIMD once more", linked) == "SIMD once more"  # linked once, at the first use
