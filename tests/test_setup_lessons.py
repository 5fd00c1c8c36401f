"""Set-up and lessons (issue 19): the build directory never shadows `build`, and the
ladder figure keeps the two FMA-peak labels of close peaks apart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


@pytest.mark.skipif(not PYPROJECT.is_file() or sys.version_info < (3, 11), reason="needs the source tree and tomllib")
def test_build_dir_is_not_build():
    import tomllib

    conf = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["scikit-build"]
    # a build/ folder in the repository root shadows the `build` package: `python -m build` fails
    assert not conf["build-dir"].startswith("build/"), conf["build-dir"]
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert conf["build-dir"].split("/")[0] + "/" in ignored
    assert {"dist/", "wheelhouse/"} <= set(ignored)


def _peak_labels(gflops_1t: float, gflops_all: float) -> dict[str, tuple[float, str]]:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from whygpu import plots

    saved = {}

    def keep(self, *args, **kwargs):  # capture the figure instead of writing it
        saved["fig"] = self

    recs = [{"kernel": "packed", "n": n, "gflops": 10.0, "device": "cpu"} for n in (128, 256)]
    doc = {
        "params": {"kernels": ["packed"], "sizes": [128, 256], "dtype": "float32"},
        "measurements": recs,
        "peak": {"gflops_1t": gflops_1t, "gflops_all": gflops_all, "threads": 2},
    }
    mp = pytest.MonkeyPatch()
    mp.setattr(Figure, "savefig", keep)
    try:
        plots.plot_ladder(doc, "unused.png")
    finally:
        mp.undo()
    texts = [t for ax in saved["fig"].axes for t in ax.texts if t.get_text().startswith("FMA peak")]
    return {t.get_text().split(":")[0]: (t.get_position()[1], t.get_verticalalignment()) for t in texts}


def test_close_fma_peaks_label_on_opposite_sides():
    labels = _peak_labels(100.0, 108.0)
    y1, va1 = labels["FMA peak, 1 core"]
    y2, va2 = labels["FMA peak, 2 cores"]
    assert y1 < 100.0 and va1 == "top"  # below its line
    assert y2 > 108.0 and va2 == "baseline"  # above its line


def test_far_fma_peaks_label_above_their_lines():
    labels = _peak_labels(100.0, 190.0)
    assert labels["FMA peak, 1 core"][0] > 100.0
    assert labels["FMA peak, 2 cores"][0] > 190.0
