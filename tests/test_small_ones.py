"""Small rough edges a new user met (issue 32): a device name from another framework gets an error that
names whygpu's back ends, fit says when it casts the data to the model's dtype, and skip reasons are true
(the notebooks are looked for beside tests/, where they are, also when whygpu is installed from a wheel;
the install hints name this folder, not a package index whygpu is not on)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from whygpu import nn, optim

TESTS = Path(__file__).resolve().parent


# -- model.to("gpu") ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpu", "GPU", "cuda:0"])
def test_to_a_gpu_name_says_cuda(name):
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"unknown device .*use 'cuda' \(the GPU back end"):
        model.to(name)
    with pytest.raises(ValueError, match="use 'cuda'"):  # precision= is checked after the name
        model.to(name, precision="bf16")
    assert model.backend == "numpy"  # nothing moved


def test_to_cpu_names_the_cpu_back_ends():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="'openmp'.*'numpy'.*'cuda' is the GPU back end") as err:
        model.to("cpu")
    assert "numpy" in str(err.value)
    with pytest.raises(ValueError, match="unknown back end 'bogus'"):  # other names: the list, as before
        model.to("bogus")


# -- fit's cast ----------------------------------------------------------------------------------------
def _fit(model, X, verbose):
    y = np.arange(X.shape[0]) % 2
    model.fit(X, y, optimizer=optim.SGD(model.parameters(), lr=0.01), loss=nn.CrossEntropyLoss(), verbose=verbose)


def test_fit_says_once_when_it_casts_float64_data_to_a_float32_model(capsys):
    model = nn.Sequential(nn.Linear(4, 2))
    X = np.random.default_rng(0).standard_normal((8, 4))  # float64, NumPy's default
    _fit(model, X, 2)
    err = capsys.readouterr().err
    assert err.count("note: fit casts X from float64 to the model's float32") == 1, err
    assert "X.astype(np.float32)" in err and "model.to(dtype=np.float64)" in err
    _fit(model, X, 2)
    assert "casts" not in capsys.readouterr().err  # once per model


def test_data_parallel_fit_says_it_too(capsys):
    pytest.importorskip("mpi4py")
    import whygpu.distributed as dist

    model = nn.Sequential(nn.Linear(4, 2))
    dp = dist.DataParallel(model)  # one rank, in this process
    X = np.random.default_rng(0).standard_normal((8, 4))
    dp.fit(X, np.arange(8) % 2, optimizer=optim.SGD(model.parameters(), lr=0.01), loss=nn.CrossEntropyLoss(), verbose=2)
    assert capsys.readouterr().err.count("note: fit casts X from float64 to the model's float32") == 1


@pytest.mark.parametrize("case", ["float32 data", "float64 model", "verbose=0"])
def test_fit_says_nothing_without_a_cast_or_when_silent(capsys, case):
    model = nn.Sequential(nn.Linear(4, 2))
    X = np.random.default_rng(0).standard_normal((8, 4))
    if case == "float32 data":
        X = X.astype(np.float32)
    elif case == "float64 model":
        model.double()
    _fit(model, X, 0 if case == "verbose=0" else 2)
    assert "casts" not in capsys.readouterr().err


# -- skip reasons --------------------------------------------------------------------------------------
def test_notebook_tests_look_beside_tests_not_beside_the_installed_package():
    """Against a wheel, whygpu lives in site-packages: a path to notebooks/ from its __file__ does not
    exist, and the test skipped saying the tree had none when it had."""
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if '"notebooks"' in line:
                found.append(path.name)
                assert ".__file__" not in line and "PACKAGE_ROOT" not in line, f"{path.name}: {line.strip()}"
    assert len(found) >= 3, found
    assert (TESTS.parent / "notebooks").is_dir() or not (TESTS.parent / "python").is_dir()


def test_skip_reasons_install_from_this_folder():
    """whygpu is not on a package index: `pip install 'whygpu[mpi]'` fails; the extras install from the
    source folder."""
    for path in sorted(TESTS.glob("test_*.py")):
        for m in re.finditer(r"reason=(f?\"[^\"]*\"|f?'[^']*')", path.read_text(encoding="utf-8")):
            assert "whygpu[" not in m.group(1), f"{path.name}: {m.group(1)}"
    # nor do the package's own install hints (they name what to pip install, which works from a wheel too)
    package = TESTS.parent / "python" / "whygpu"
    if package.is_dir():
        for path in sorted(package.rglob("*.py")):
            assert "install 'whygpu[" not in path.read_text(encoding="utf-8"), path.name
            assert "install whygpu[" not in path.read_text(encoding="utf-8"), path.name
