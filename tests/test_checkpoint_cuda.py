"""Saving and loading on the GPU back end (issue 33): state dicts come down as NumPy arrays and go
back up keeping the model on the GPU; optimizer state (in GPU memory) round-trips; fit's GPU loop
(CUDA graphs) checkpoints and resumes to the bit.  Marked ``cuda``: skipped without a usable GPU,
and run on the CPU over the CUDA emulation by tests/test_cuda_emulated.py."""

from __future__ import annotations

import numpy as np
import pytest

import whygpu
import whygpu.cuda as wc
from whygpu import nn, optim

from .ckpt_child import steps

needs_gpu = pytest.mark.skipif(not wc.is_available(), reason=f"no usable GPU: {wc.unavailable_reason()}")
pytestmark = [pytest.mark.cuda, needs_gpu]


def make(seed=0, backend="cuda", dropout=True):
    whygpu.manual_seed(seed)
    layers = [nn.Linear(10, 16), nn.ReLU()] + ([nn.Dropout(0.25)] if dropout else []) + [nn.Linear(16, 3)]
    return nn.Sequential(*layers).to(backend)


def data(n=45):
    rng = np.random.default_rng(2)
    return rng.standard_normal((n, 10)).astype(np.float32), rng.integers(0, 3, n)


def test_state_dict_on_the_gpu_comes_down_and_loads_back_up(tmp_path):
    gpu, host = make(seed=1, dropout=False), make(seed=2, backend="numpy", dropout=False)
    sd = gpu.state_dict()
    assert all(type(v) is np.ndarray and v.dtype == np.float32 for v in sd.values())
    whygpu.save(sd, tmp_path / "g.npz")
    host.load_state_dict(whygpu.load(tmp_path / "g.npz"))
    other = make(seed=3, dropout=False)
    other.load_state_dict(host.state_dict())
    assert other.backend == "cuda" and other.dtype == np.float32
    X, _ = data()
    np.testing.assert_allclose(other.predict(X), host.predict(X), rtol=1e-5, atol=1e-6)
    with pytest.raises(whygpu.CheckpointError, match="shape"):
        other.load_state_dict({**host.state_dict(), "0.bias": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(other.state_dict()["0.bias"], host.state_dict()["0.bias"])


def test_optimizer_state_in_gpu_memory_round_trips():
    X, y = data()
    a = make(dropout=False)
    oa = optim.Adam(a.parameters(), lr=1e-2)
    steps(a, oa, X, y, 3)
    sd = oa.state_dict()
    assert type(sd["state"][0]["exp_avg"]) is np.ndarray and sd["state"][0]["step"] == 3
    b = make(seed=5, dropout=False)
    b.load_state_dict(a.state_dict())
    ob = optim.Adam(b.parameters())
    ob.load_state_dict(sd)
    steps(a, oa, X, y, 2)
    steps(b, ob, X, y, 2)
    for (name, w), v in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(w, v, err_msg=name)


@pytest.mark.parametrize("every", [None, 2])
def test_fit_on_the_gpu_resumes_to_the_same_bits(tmp_path, every):
    X, y = data()
    kw = dict(batch_size=8, loss=nn.CrossEntropyLoss(), verbose=0)
    ref = make()
    ref.fit(X, y, epochs=3, optimizer=optim.Adam(ref.parameters(), lr=1e-2), **kw)
    first = make()
    path = tmp_path / "run.npz"
    first.fit(X, y, epochs=1, optimizer=optim.Adam(first.parameters(), lr=1e-2), checkpoint=path,
              checkpoint_every=every, **kw)  # fmt: skip
    again = make(seed=9)
    again.fit(X, y, epochs=3, optimizer=optim.Adam(again.parameters(), lr=0.5), resume=path, **kw)
    assert again.backend == "cuda"
    for (name, w), v in zip(ref.state_dict().items(), again.state_dict().values()):
        np.testing.assert_array_equal(w, v, err_msg=name)
