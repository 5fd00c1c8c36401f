"""Saving and loading (issue 33): state dicts named as PyTorch names them, whygpu.save/load in a
.npz file that never runs code, atomic writes, and fit's checkpoints that resume to the bit.

The kill tests run a child process (tests/ckpt_child.py) and SIGKILL it: during a save, and in
the middle of a fit's second epoch; a new process then resumes from what was left on disk.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import whygpu
from whygpu import nn, optim

from .ckpt_child import data, make, steps

HERE = pathlib.Path(__file__).resolve().parent
CHILD = HERE / "ckpt_child.py"


def weights(model):
    return [p.data.copy() for p in model.parameters()]


# -- whygpu.save / whygpu.load -----------------------------------------------------------------
def test_save_load_round_trips_a_nested_dict(tmp_path):
    obj = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "n": {0: np.ones(2), 1: {"x": 3, "y": [1.5, None, "s", True]}},
        "t": (1, 2),
        "big": 2**100,
        "empty": np.zeros((0, 4)),
    }
    path = tmp_path / "x.npz"
    whygpu.save(obj, path)
    got = whygpu.load(path)
    assert set(got) == set(obj)
    np.testing.assert_array_equal(got["a"], obj["a"])
    assert got["a"].dtype == np.float32
    assert list(got["n"]) == [0, 1] and got["n"][1] == {"x": 3, "y": [1.5, None, "s", True]}
    assert got["t"] == (1, 2) and got["big"] == 2**100 and got["empty"].shape == (0, 4)
    # what NumPy alone reads, with pickle refused: every array under its path
    with np.load(path, allow_pickle=False) as f:
        assert "a" in f.files and "n/0" in f.files
        np.testing.assert_array_equal(f["a"], obj["a"])


def test_save_refuses_what_it_cannot_store_without_pickle(tmp_path):
    with pytest.raises(TypeError, match="dict"):
        whygpu.save([1, 2], tmp_path / "x.npz")
    with pytest.raises(TypeError, match="object"):
        whygpu.save({"o": np.array([object()])}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="set"):
        whygpu.save({"s": {1, 2}}, tmp_path / "x.npz")
    with pytest.raises(ValueError, match="/"):
        whygpu.save({"a/b": 1}, tmp_path / "x.npz")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_a_bad_file_gives_one_clear_error(tmp_path):
    model = make()
    path = tmp_path / "m.npz"
    whygpu.save(model.state_dict(), path)
    raw = path.read_bytes()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        whygpu.load(tmp_path / "missing.npz")
    cut = tmp_path / "cut.npz"
    for length in (0, 10, len(raw) // 2, len(raw) - 7):
        cut.write_bytes(raw[:length])
        with pytest.raises(whygpu.CheckpointError, match="cut.npz"):
            whygpu.load(cut)
    # one flipped byte inside an array's data: the zip entry's CRC-32 catches it
    bad = bytearray(raw)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("0.weight.npy")
    bad[info.header_offset + 30 + len(info.filename) + info.file_size // 2] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(bad))
    with pytest.raises(whygpu.CheckpointError, match="CRC|corrupt"):
        whygpu.load(tmp_path / "flip.npz")
    np.savez(tmp_path / "plain.npz", w=np.ones(3))
    with pytest.raises(whygpu.CheckpointError, match="not one whygpu.save wrote"):
        whygpu.load(tmp_path / "plain.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(whygpu.CheckpointError):
        whygpu.load(tmp_path / "text.npz")


def test_a_kill_during_save_leaves_the_previous_file(tmp_path):
    """The child saves v1, then starts saving v2 and stops inside np.savez (the temporary file half
    written); it is SIGKILLed there.  The path still holds v1, whole."""
    path = tmp_path / "ck.npz"
    with subprocess.Popen(
        [sys.executable, str(CHILD), "save", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            line = proc.stdout.readline()
            assert line.strip() == "writing", line + proc.stderr.read()
            tmps = [p for p in tmp_path.iterdir() if p.name != "ck.npz"]
            assert tmps and tmps[0].stat().st_size > 0  # the new file is there, half written
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    got = whygpu.load(path)
    assert got["version"] == 1
    np.testing.assert_array_equal(got["w"], np.full(1000, 1.0))


# -- state dicts -------------------------------------------------------------------------------
def test_state_dict_names_and_loading(tmp_path):
    model = make(seed=3)
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert sd["0.weight"].shape == (24, 10) and sd["3.bias"].shape == (4,)
    sd["0.bias"][:] = 7  # a copy: the model is untouched
    assert not np.any(model[0].bias.data == 7)
    whygpu.save(model.state_dict(), tmp_path / "m.npz")
    other = make(seed=4)
    assert other.load_state_dict(whygpu.load(tmp_path / "m.npz")) == ([], [])
    for a, b in zip(weights(model), weights(other)):
        np.testing.assert_array_equal(a, b)


def test_loading_another_model_says_what_differs_and_changes_nothing():
    model = make(seed=0)
    before = weights(model)
    wide = make(seed=1, hidden=25).state_dict()
    with pytest.raises(whygpu.CheckpointError, match=r"0\.weight: shape \(25, 10\) in the state, \(24, 10\)"):
        model.load_state_dict(wide)
    partial = make(seed=1).state_dict()
    del partial["3.bias"]
    partial["9.weight"] = np.zeros(2, np.float32)
    with pytest.raises(whygpu.CheckpointError, match=r"missing: 3\.bias.*unexpected: 9\.weight"):
        model.load_state_dict(partial)
    f64 = {k: v.astype(np.float64) for k, v in make(seed=1).state_dict().items()}
    with pytest.raises(whygpu.CheckpointError, match="dtype float64 in the state, float32 in the model"):
        model.load_state_dict(f64)
    for a, b in zip(before, weights(model)):
        np.testing.assert_array_equal(a, b)  # every failure left every parameter as it was
    missing, unexpected = model.load_state_dict(partial, strict=False)
    assert missing == ["3.bias"] and unexpected == ["9.weight"]
    np.testing.assert_array_equal(model[0].weight.data, partial["0.weight"])


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_optimizer_state_round_trips_and_continues_the_same(kind, tmp_path):
    X, y = data(40)

    def opt_for(m):
        if kind == "sgd":
            return optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
        return optim.Adam(m.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-3)

    a = make(dropout=False)
    oa = opt_for(a)
    steps(a, oa, X, y, 3)
    sd = oa.state_dict()
    assert sd["param_groups"][0]["params"] == [0, 1, 2, 3]
    names = {"sgd": {"momentum_buffer"}, "adam": {"exp_avg", "exp_avg_sq", "step"}}[kind]
    assert set(sd["state"][0]) == names and sd["state"][2][sorted(names)[0]].shape == (4, 24)
    whygpu.save({"m": a.state_dict(), "o": sd}, tmp_path / "c.npz")
    ck = whygpu.load(tmp_path / "c.npz")
    b = make(seed=9, dropout=False)
    b.load_state_dict(ck["m"])
    ob = opt_for(b)
    ob.lr = 123.0  # the state's hyperparameters win, as in PyTorch
    ob.load_state_dict(ck["o"])
    assert ob.lr == oa.lr
    steps(a, oa, X, y, 2)
    steps(b, ob, X, y, 2)
    for x, z in zip(weights(a), weights(b)):
        np.testing.assert_array_equal(x, z)
    with pytest.raises(whygpu.CheckpointError, match="'sgd' optimizer's|'adam' optimizer's"):
        (optim.Adam if kind == "sgd" else optim.SGD)(b.parameters(), lr=0.1).load_state_dict(sd)
    small = make(hidden=5, dropout=False)
    o_small = opt_for(small)
    with pytest.raises(whygpu.CheckpointError, match="parameter 0's"):
        o_small.load_state_dict(sd)
    assert all(s is None for store in o_small._states() for s in store)  # nothing assigned


def test_rng_state_round_trips():
    whygpu.manual_seed(5)
    state = whygpu.get_rng_state()
    a = whygpu._random.get_rng().random(4)
    whygpu.manual_seed(99)
    whygpu.set_rng_state(state)
    np.testing.assert_array_equal(whygpu._random.get_rng().random(4), a)
    with pytest.raises(TypeError):
        whygpu.set_rng_state("nope")
    with pytest.raises(ValueError, match="unknown generator"):
        whygpu.set_rng_state({"bit_generator": "Nope", "state": {}})


def test_a_trained_model_loads_into_torch_and_gives_the_same_outputs():
    torch = pytest.importorskip("torch")
    X, y = data(64)
    model = make(dropout=False, hidden=32)
    model.fit(X, y, epochs=3, batch_size=16, optimizer=optim.Adam(model.parameters(), lr=1e-2),
              loss=nn.CrossEntropyLoss(), verbose=0)  # fmt: skip
    tm = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    with torch.no_grad():
        want = tm(torch.from_numpy(X)).numpy()
    got = model.predict(X)
    assert np.max(np.abs(got - want)) <= 1e-6 * max(1.0, float(np.max(np.abs(want))))
    # and back: a torch model's state dict loads into whygpu (tensors taken as their arrays)
    other = make(seed=7, dropout=False, hidden=32)
    other.load_state_dict(tm.state_dict())
    np.testing.assert_array_equal(other.predict(X), got)


# -- fit: checkpoint and resume ------------------------------------------------------------------
def _fit(model, opt, **kw):
    X, y = data()
    return model.fit(X, y, batch_size=16, optimizer=opt, loss=nn.CrossEntropyLoss(), verbose=0, **kw)


@pytest.mark.parametrize("backend", ["numpy", "openmp"])
@pytest.mark.parametrize("kill_at", [7, 10])  # after epoch 1 (7 batches each); inside epoch 2
def test_resume_after_a_kill_is_exact(backend, kill_at, tmp_path):
    """An MLP with Dropout, trained with Adam for 3 epochs, killed (SIGKILL) at step kill_at; a new
    process resumes from the checkpoint and ends with the uninterrupted run's weights, to the bit."""
    if backend not in nn.backends():
        pytest.skip(f"{backend} is not built here")
    path = tmp_path / "run.npz"
    r = subprocess.run([sys.executable, str(CHILD), "fit", str(path), backend, str(kill_at)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    progress = whygpu.load(path)["progress"]
    assert (progress["epoch"], progress["batch"]) == ((1, 0) if kill_at == 7 else (1, 2))
    r = subprocess.run([sys.executable, str(CHILD), "resume", str(path), backend],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    resumed = whygpu.load(str(path) + ".final.npz")
    model = make(backend=backend)
    history = _fit(model, optim.Adam(model.parameters(), lr=1e-2), epochs=3)
    for name, w in model.state_dict().items():
        np.testing.assert_array_equal(resumed["model"][name], w, err_msg=name)
    assert resumed["loss"] == history["loss"][-1]


def test_resume_checks_before_it_changes_anything(tmp_path):
    path = tmp_path / "run.npz"
    model = make()
    _fit(model, optim.Adam(model.parameters(), lr=1e-2), epochs=1, checkpoint=path)
    other = make(seed=2)
    before = weights(other)
    with pytest.raises(whygpu.CheckpointError, match="batch_size = 16; this fit has 8"):
        other.fit(*data(), batch_size=8, optimizer=optim.Adam(other.parameters()), loss=nn.CrossEntropyLoss(),
                  verbose=0, resume=path)  # fmt: skip
    wide = make(hidden=30)
    with pytest.raises(whygpu.CheckpointError, match="shape"):
        _fit(wide, optim.Adam(wide.parameters()), epochs=2, resume=path)
    with pytest.raises(whygpu.CheckpointError, match="'adam' optimizer's"):
        _fit(other, optim.SGD(other.parameters(), lr=0.1), epochs=2, resume=path)
    for a, b in zip(before, weights(other)):
        np.testing.assert_array_equal(a, b)
    whygpu.save(make().state_dict(), tmp_path / "sd.npz")
    with pytest.raises(whygpu.CheckpointError, match="not a fit checkpoint"):
        _fit(other, optim.Adam(other.parameters()), epochs=2, resume=tmp_path / "sd.npz")
    with pytest.raises(FileNotFoundError):
        _fit(other, optim.Adam(other.parameters()), epochs=2, resume=tmp_path / "none.npz")
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint"):
        _fit(other, optim.Adam(other.parameters()), checkpoint_every=2)
    with pytest.raises(ValueError, match=">= 1"):
        _fit(other, optim.Adam(other.parameters()), checkpoint=path, checkpoint_every=0)
    with pytest.raises(TypeError, match="file path"):
        _fit(other, optim.Adam(other.parameters()), checkpoint=3)
    with pytest.raises(FileNotFoundError, match="no folder"):
        _fit(other, optim.Adam(other.parameters()), checkpoint=tmp_path / "nope" / "run.npz")
    with pytest.raises(IsADirectoryError, match="file name"):
        _fit(other, optim.Adam(other.parameters()), checkpoint=tmp_path)


def test_checkpoint_every_saves_mid_epoch_and_history_continues(tmp_path):
    path = tmp_path / "run.npz"
    model = make()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _fit(model, opt, epochs=1, checkpoint=path, checkpoint_every=3)
    assert whygpu.load(path)["progress"]["epoch"] == 1  # the epoch's end came last
    ref = make()
    want = _fit(ref, optim.SGD(ref.parameters(), lr=0.05, momentum=0.9), epochs=2,
                validation_data=data(20))  # fmt: skip
    again = make(seed=8)
    got = _fit(again, optim.SGD(again.parameters(), lr=0.01), epochs=2, resume=path, validation_data=data(20))
    assert got["loss"] == want["loss"] and len(got["val_loss"]) == 1  # epoch 1 had no validation then
    for a, b in zip(weights(ref), weights(again)):
        np.testing.assert_array_equal(a, b)
