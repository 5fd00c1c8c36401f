"""whygpu.nn on the GPU: the ``cuda`` back end keeps parameters, activations,
gradients and optimizer state in GPU memory.

The first half runs everywhere: without a GPU, "cuda" is not listed and
asking for it says why.  The second half (marked ``cuda``) needs a usable
GPU and is skipped otherwise; it checks GPU training steps against the
``numpy`` reference, fit on XOR, moving a model to the GPU and back, the
Parameter contract (.data/.grad are NumPy copies, assignment uploads) and
the profile's account of host <-> device copies.  tests/test_cuda_emulated.py
also runs that half on the CPU, over an emulation of the CUDA kernels, so
the shapes here stay small.
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import whygpu
import whygpu.cuda as wc
from whygpu import datasets, nn, optim

GPU = wc.is_available()
CUDA_NAMES = [name for name, _, _ in wc.LADDER]
needs_gpu = pytest.mark.skipif(not GPU, reason=f"no usable GPU: {wc.unavailable_reason()}")


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):  # the numpy reference on a shared machine
        yield


def make_mlp(sizes, act=nn.ReLU, seed=0, extra=()):
    whygpu.manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
            layers.extend(e() for e in extra)
    return nn.Sequential(*layers)


def data(n=32, features=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)).astype(np.float32), rng.integers(0, classes, n)


# ---- Everywhere ------------------------------------------------------------------------------


def test_cuda_is_a_back_end_exactly_when_a_gpu_is():
    names = nn.backends()
    assert ("cuda" in names) == GPU
    for name in CUDA_NAMES:  # cuda_wgmma also needs a Hopper GPU (it says why otherwise)
        assert (name in names) == (GPU and wc._kernel_unavailable(name) is None)
    assert names[0] == "numpy" and "python" in names
    if GPU:
        assert names.index("cuda") == names.index("cuda_naive") - 1  # after the CPU ladder


@pytest.mark.skipif(GPU, reason="a GPU is usable here")
@pytest.mark.parametrize("name", ["cuda", "cuda_warptile", "cuda_smem"])
def test_to_cuda_without_a_gpu_says_why(name):
    model = make_mlp([4, 3, 2])
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(whygpu.KernelUnavailableError, match=f"back end '{name}' is unavailable: ") as e:
        model.to(name)
    assert wc.unavailable_reason() in str(e.value)
    # nothing moved
    assert model.backend == "numpy"
    for p, b in zip(model.parameters(), before):
        assert type(p) is nn.Parameter and isinstance(p.data, np.ndarray)
        np.testing.assert_array_equal(p.data, b)
    with pytest.raises(whygpu.KernelUnavailableError):
        nn.CrossEntropyLoss().to(name)


def test_unknown_cuda_spelling_is_refused():
    with pytest.raises(ValueError, match="unknown device 'cuda:0'"):
        make_mlp([4, 2]).to("cuda:0")


def test_a_cpu_profile_has_no_copies():
    model = make_mlp([12, 8, 4])
    x, y = data()
    prof = nn.step_breakdown(
        model, x, y, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), steps=2, warmup=0
    )
    b = prof.breakdown()
    assert (b["transfer_s"], b["transfer_bytes"], b["transfer_calls"], b["transfer_share"]) == (0.0, 0, 0, 0.0)
    assert not any("device" in r["name"] for r in b["rows"])
    assert "copies" not in prof.table()


# ---- On a GPU ----------------------------------------------------------------------------------


def run_steps(backend, opt_factory, steps=3, sizes=(12, 16, 4), act=nn.ReLU, loss_fn=None, x=None, y=None, extra=()):
    model = make_mlp(list(sizes), act, extra=extra).to(backend)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    if x is None:
        x, y = data(features=sizes[0], classes=sizes[-1])
    opt = opt_factory(model.parameters())
    whygpu.manual_seed(1)  # the same dropout masks on both back ends
    losses = []
    for _ in range(steps):
        out = model(x)
        losses.append(loss_fn(out, y))
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    return model, np.array(losses), [p.data for p in model.parameters()]


OPTIMIZERS = {
    "sgd": lambda p: optim.SGD(p, lr=0.1),
    "sgd-momentum": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
    "adam": lambda p: optim.Adam(p, lr=1e-2, weight_decay=1e-3),
}


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize(
    "backend, opt", [("cuda", "sgd"), ("cuda", "sgd-momentum"), ("cuda", "adam"), ("cuda_smem", "sgd-momentum")]
)
def test_gpu_training_step_matches_numpy(backend, opt):
    ref_model, ref_losses, ref_params = run_steps("numpy", OPTIMIZERS[opt])
    model, losses, params = run_steps(backend, OPTIMIZERS[opt])
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    assert losses[-1] < losses[0]
    for p, q in zip(params, ref_params):
        assert isinstance(p, np.ndarray) and p.dtype == np.float32
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6)


CASES = {
    "tanh-mse": dict(act=nn.Tanh, loss=nn.MSELoss, target="float"),
    "sigmoid-bce": dict(act=nn.Sigmoid, loss=nn.BCEWithLogitsLoss, target="binary"),
    "leaky-dropout-xent": dict(
        act=lambda: nn.LeakyReLU(0.1), loss=nn.CrossEntropyLoss, target="labels", extra=(lambda: nn.Dropout(0.3),)
    ),
    "softmax-mse": dict(act=nn.Softmax, loss=nn.MSELoss, target="float"),
}


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("case", list(CASES))
def test_every_layer_and_loss_matches_numpy_on_the_gpu(case):
    c = CASES[case]
    x, labels = data(n=24, features=10, classes=3, seed=2)
    rng = np.random.default_rng(3)
    y = {
        "labels": labels,
        "float": rng.standard_normal((24, 3)).astype(np.float32),
        "binary": (rng.random((24, 3)) < 0.5).astype(np.float32),
    }[c["target"]]

    def sgd(p):
        return optim.SGD(p, lr=0.05, momentum=0.5)

    runs = [
        run_steps(
            be, sgd, steps=2, sizes=(10, 8, 3), act=c["act"], loss_fn=c["loss"](), x=x, y=y, extra=c.get("extra", ())
        )
        for be in ("numpy", "cuda")
    ]
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-5, atol=1e-6)
    for p, q in zip(runs[1][2], runs[0][2]):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@needs_gpu
def test_fit_learns_xor_on_the_gpu():
    X, y = datasets.xor()
    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).to("cuda")
    hist = model.fit(
        X,
        y,
        epochs=40,
        batch_size=4,
        optimizer=optim.Adam(model.parameters(), lr=0.1),
        loss=nn.CrossEntropyLoss(),
        verbose=0,
    )
    assert hist["accuracy"][-1] == 1.0
    assert hist["loss"][-1] < 0.2 < hist["loss"][0]
    assert model.evaluate(X, y)["accuracy"] == 1.0
    pred = model.predict(X)
    assert isinstance(pred, np.ndarray) and pred.shape == (4, 2) and pred.dtype == np.float32
    np.testing.assert_array_equal(pred.argmax(axis=1), y)
    assert model.backend == "cuda"


@pytest.mark.cuda
@needs_gpu
def test_fit_evaluate_predict_match_numpy():
    X, y = data(n=40, features=6, classes=3, seed=4)
    results = []
    for be in ("numpy", "cuda"):
        model = make_mlp([6, 8, 3]).to(be)
        whygpu.manual_seed(5)  # the same shuffling
        hist = model.fit(
            X,
            y,
            epochs=2,
            batch_size=16,
            optimizer=optim.SGD(model.parameters(), lr=0.1),
            loss=nn.CrossEntropyLoss(),
            validation_data=(X[:10], y[:10]),
            verbose=0,
        )
        results.append((hist, model.evaluate(X, y), model.predict(X, batch_size=16)))
    (h0, e0, p0), (h1, e1, p1) = results
    for key in h0:
        np.testing.assert_allclose(h1[key], h0[key], rtol=1e-5, atol=1e-6)
    assert e1["accuracy"] == e0["accuracy"]
    assert e1["loss"] == pytest.approx(e0["loss"], rel=1e-5)
    np.testing.assert_allclose(p1, p0, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@needs_gpu
def test_to_cuda_and_back_keeps_parameters_gradients_and_optimizer_state():
    x, y = data()
    loss_fn = nn.CrossEntropyLoss()

    def step(model, opt):
        loss_fn(model(x), y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()

    ref = make_mlp([12, 16, 4])
    ref_opt = optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    model = make_mlp([12, 16, 4])
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for be in ("numpy", "cuda", "numpy", "cuda", "openmp" if "openmp" in nn.backends() else "numpy"):
        before = [(p.data.copy(), p.grad.copy()) for p in model.parameters()]
        model.to(be)
        assert model.backend == be and all(layer.backend == be for layer in model)
        for p, (d, g) in zip(model.parameters(), before):  # a move keeps values and gradients exactly
            np.testing.assert_array_equal(p.data, d)
            np.testing.assert_array_equal(p.grad, g)
            assert (type(p) is nn.Parameter) == (be != "cuda")
        step(model, opt)  # the momentum buffers follow the parameters
        step(ref, ref_opt)
    for p, q in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-4, atol=1e-5)
    assert isinstance(opt._velocity[0], np.ndarray)


@pytest.mark.cuda
@needs_gpu
def test_parameters_on_the_gpu_are_read_and_assigned_as_numpy():
    model = make_mlp([3, 2]).to("cuda")
    lin = model[0]
    w = lin.weight
    assert isinstance(w._data, wc.DeviceArray)
    d = w.data
    assert isinstance(d, np.ndarray) and d.dtype == np.float32 and d.shape == (2, 3)
    d[0, 0] = 123.0  # a copy: the GPU's values are unchanged
    assert w.data[0, 0] != 123.0
    w.data = np.zeros((2, 3))  # assignment uploads (and converts)
    lin.bias.data = [1.0, -2.0]
    out = model(np.ones((4, 3), np.float32))
    assert isinstance(out, wc.DeviceArray)
    np.testing.assert_array_equal(out.to_host(), np.tile([1.0, -2.0], (4, 1)).astype(np.float32))
    w.data -= 1.0  # read, change, assign
    np.testing.assert_array_equal(w.data, -np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        w.data = np.zeros((3, 2))
    np.testing.assert_array_equal(w.grad, np.zeros((2, 3), np.float32))  # zeroed lazily
    w.grad = np.full((2, 3), 0.5)
    np.testing.assert_array_equal(w.grad, np.full((2, 3), 0.5, np.float32))
    w.grad *= 2
    np.testing.assert_array_equal(w.grad, np.ones((2, 3), np.float32))
    optim.SGD([w], lr=0.5).step()
    np.testing.assert_array_equal(w.data, np.full((2, 3), -1.5, np.float32))
    w.grad = None
    np.testing.assert_array_equal(w.grad, np.zeros((2, 3), np.float32))
    assert w.shape == (2, 3) and w.size == 6 and w.dtype == np.float32 and "shape=(2, 3)" in repr(w)


@pytest.mark.cuda
@needs_gpu
def test_the_gpu_is_float32_only():
    model = make_mlp([3, 2])
    with pytest.raises(TypeError, match="float32 only"):
        model.to("cuda", dtype=np.float64)
    assert model.backend == "numpy" and model.dtype == np.float32  # nothing changed
    model.double()
    with pytest.raises(TypeError, match="float32 only"):
        model.to("cuda")
    assert model.backend == "numpy" and model[0].weight.dtype == np.float64
    model.to("cuda", dtype=np.float32)
    assert model.backend == "cuda" and model[0].weight.dtype == np.float32
    with pytest.raises(TypeError, match="float32 only"):
        model.double()
    assert model.dtype == np.float32
    with pytest.raises(TypeError, match="float32"):
        model(wc.to_device(np.ones((2, 3), np.float64)))
    out = model(np.ones((2, 3), np.float64))  # host input: converted, as on the CPU
    assert out.dtype == np.float32
    model.to("numpy", dtype=np.float64)
    assert model[0].weight.dtype == np.float64 and isinstance(model[0].weight.data, np.ndarray)


@pytest.mark.cuda
@needs_gpu
def test_device_batches_are_used_in_place_and_checked():
    x, y = data()
    model = make_mlp([12, 16, 4]).to("cuda")
    loss_fn = nn.CrossEntropyLoss()
    host = loss_fn(model(x), y)
    dx, dy = wc.to_device(x), wc.to_device(y.astype(np.int64))
    assert loss_fn(model(dx), dy) == pytest.approx(host, rel=1e-6)
    with pytest.raises(ValueError, match="12 input features"):
        model(wc.to_device(np.ones((2, 5), np.float32)))
    with pytest.raises(ValueError, match="2-D"):
        model(wc.to_device(np.ones(12, np.float32)))
    logits = model(dx)
    with pytest.raises(TypeError, match="int64"):
        loss_fn(logits, wc.to_device(y.astype(np.int32)))
    with pytest.raises(ValueError, match="one label per row"):
        loss_fn(logits, wc.to_device(y[:5].astype(np.int64)))
    bad = y.astype(np.int64)
    bad[3] = 7
    with pytest.raises(ValueError, match="outside"):
        loss_fn(logits, wc.to_device(bad))  # the GPU counts labels out of range
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\)"):
        loss_fn(logits, bad)  # host labels are checked on the host, as on the CPU
    with pytest.raises(ValueError, match="latest output"):
        model.backward(wc.to_device(np.ones((3, 4), np.float32)))
    mse = nn.MSELoss()
    t = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    assert mse(logits, wc.to_device(t)) == pytest.approx(mse(logits, t), rel=1e-6)
    with pytest.raises(TypeError, match="float32"):
        mse(logits, wc.to_device(t.astype(np.float64)))


@pytest.mark.cuda
@needs_gpu
def test_profile_counts_host_device_copies():
    batch, features, classes = 32, 12, 4
    x, y = data(batch, features, classes)
    model = make_mlp([features, 16, classes]).to("cuda")
    loss_fn = nn.CrossEntropyLoss()
    steps = 3

    def breakdown(xb, yb):
        prof = nn.step_breakdown(model, xb, yb, loss_fn, optim.SGD(model.parameters(), lr=0.1), steps=steps, warmup=1)
        return prof, prof.breakdown()

    # Data copied every step: the batch and the labels go in, the loss (two float64s) comes out.
    prof, b = breakdown(x, y)
    assert b["backend"] == "cuda" and b["steps"] == steps
    assert b["transfer_bytes"] == steps * (x.nbytes + batch * 8 + 16)
    assert b["transfer_calls"] == steps * 3
    rows = {r["name"]: r for r in b["rows"]}
    copies = rows["host <-> device copies"]
    assert copies["total_s"] == b["transfer_s"] > 0 and copies["matmul_s"] == 0
    assert 0 < b["transfer_share"] < 1
    assert sum(r["total_s"] for r in b["rows"]) == pytest.approx(b["wall_s"], rel=1e-6)
    assert all(r["total_s"] >= 0 for r in b["rows"])
    assert sum(r["matmul_calls"] for r in b["rows"]) == 5 * steps
    assert 0 < b["matmul_share"] < 1
    assert "host <-> device copies" in prof.table()
    # Data kept on the device: only the loss comes back.
    _, b2 = breakdown(wc.to_device(x), wc.to_device(y))
    assert b2["transfer_bytes"] == steps * 16 and b2["transfer_calls"] == steps


@pytest.mark.cuda
@needs_gpu
def test_a_profile_of_fit_counts_what_crosses_the_bus():
    X, y = data(n=20, features=5, classes=3)
    model = make_mlp([5, 4, 3]).to("cuda")
    with nn.profile(model) as prof:
        model.fit(
            X,
            y,
            epochs=1,
            batch_size=20,
            optimizer=optim.SGD(model.parameters(), lr=0.1),
            loss=nn.CrossEntropyLoss(),
            shuffle=False,
            verbose=0,
        )
    # Batch in, labels in; the loss and accuracy are summed on the GPU and come
    # back once per epoch (3 float64s), not per batch; nor do the logits.
    assert prof.transfer_bytes == X.nbytes + 20 * 8 + 3 * 8


# ---- A whole step as one CUDA graph (nn.GraphStep, and fit) -----------------------------------


def _run_steps(backend, opt_factory, batches, graph=True, between=None, extra=()):
    """Train a fresh MLP on `batches` with a GraphStep; returns (losses, parameters, step)."""
    model = make_mlp([12, 9, 4], extra=extra).to(backend)
    opt = opt_factory(model.parameters())
    step = nn.GraphStep(model, nn.CrossEntropyLoss(), opt, graph=graph)
    losses = []
    for i, (xb, yb) in enumerate(batches):
        if between is not None:
            between(i, model, opt)
        losses.append(step(xb, yb))  # held, read at the end: a later replay must not change them
    return [float(v) for v in losses], [p.data for p in model.parameters()], step


def _batches(sizes=(16, 16, 16, 7, 16, 7, 16, 16)):
    X, y = data(n=sum(sizes), features=12, classes=4)
    out, s = [], 0
    for b in sizes:
        out.append((X[s : s + b], y[s : s + b]))
        s += b
    return out


STEP_OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.1),
    "sgd-nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True),
    "adam": lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
}


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("opt", sorted(STEP_OPTIMIZERS))
def test_graph_steps_train_like_the_numpy_reference(opt):
    """Two batch shapes (two graphs), each warmed up, captured, then replayed."""
    batches = _batches()
    ref_losses, ref_params, ref_step = _run_steps("numpy", STEP_OPTIMIZERS[opt], batches)
    assert not ref_step.graphed and "CPU" in ref_step.reason
    for graph in (True, False):
        losses, params, step = _run_steps("cuda", STEP_OPTIMIZERS[opt], batches, graph=graph)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
        for got, ref in zip(params, ref_params):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
        assert step.graphed == graph and step.captures == (2 if graph else 0)
        assert (step.reason is None) == graph


@pytest.mark.cuda
@needs_gpu
def test_a_learning_rate_changed_between_replays_takes_effect():
    """The graph reads the optimizer's hyperparameters from GPU memory, rewritten before each replay."""

    def schedule(i, model, opt):
        opt.lr = 0.2 / (1 + i)

    batches = _batches((16,) * 6)
    ref_losses, ref_params, _ = _run_steps("numpy", STEP_OPTIMIZERS["sgd"], batches, between=schedule)
    losses, params, step = _run_steps("cuda", STEP_OPTIMIZERS["sgd"], batches, between=schedule)
    assert step.graphed
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    for got, ref in zip(params, ref_params):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@needs_gpu
def test_a_graph_survives_other_shapes_and_a_trip_to_the_cpu():
    """Between replays: a predict at another batch size (the layers swap their
    buffers), and model.to('numpy') and back (new parameter arrays): the step
    still trains like the reference, capturing again where it must."""
    batches = _batches((16,) * 6)
    X_other = data(n=5, features=12)[0]

    def meddle(i, model, opt):
        if i == 3:
            model.predict(X_other)
        if i == 4:
            model.to("numpy")
            model.to(model_backend[0])

    model_backend = ["numpy"]
    ref_losses, ref_params, _ = _run_steps("numpy", STEP_OPTIMIZERS["adam"], batches, between=meddle)
    model_backend[0] = "cuda"
    losses, params, step = _run_steps("cuda", STEP_OPTIMIZERS["adam"], batches, between=meddle)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    for got, ref in zip(params, ref_params):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert step.graphed and step.captures == 2  # once, and again after the parameters moved


@pytest.mark.cuda
@needs_gpu
def test_graph_step_takes_device_arrays_and_reports_bad_labels_when_read():
    batches = _batches((16,) * 4)
    ref_losses, _, _ = _run_steps("numpy", STEP_OPTIMIZERS["sgd"], batches)
    dev = [(wc.to_device(x), wc.to_device(y)) for x, y in batches]
    losses, _, step = _run_steps("cuda", STEP_OPTIMIZERS["sgd"], dev)
    assert step.graphed
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    bad = wc.to_device(np.full(16, 7, np.int64))  # 4 classes
    loss = step(dev[0][0], bad)
    with pytest.raises(ValueError, match="16 label"):
        float(loss)


@pytest.mark.cuda
@needs_gpu
def test_graph_step_falls_back_and_says_why():
    batches = _batches((16,) * 3)
    _, _, step = _run_steps("cuda", STEP_OPTIMIZERS["sgd"], batches, extra=(lambda: nn.Dropout(0.3),))
    assert not step.graphed and "Dropout" in step.reason
    model = make_mlp([12, 9, 4]).to("cuda")
    step = nn.GraphStep(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1))
    x, y = batches[0]
    with nn.profile(model):
        step(x, y)
    assert not step.graphed and "profil" in step.reason
    for args, msg in (
        ((object(), nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1)), "model"),
        ((model, "ce", optim.SGD(model.parameters(), lr=0.1)), "loss"),
        ((model, nn.CrossEntropyLoss(), None), "optimizer"),
    ):
        with pytest.raises(TypeError, match=msg):
            nn.GraphStep(*args)
    with pytest.raises(ValueError, match="labels"):
        step(x, np.full(16, 9))  # NumPy labels are checked on the host, before anything is queued


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("loss_name", ["ce", "mse", "bce"])
def test_fit_on_the_gpu_with_and_without_graphs_matches_numpy(loss_name):
    X, y = data(n=50, features=6, classes=3)
    if loss_name == "ce":
        loss, target, out = nn.CrossEntropyLoss, y, 3
    elif loss_name == "mse":
        loss, target, out = nn.MSELoss, np.eye(3, dtype=np.float32)[y], 3
    else:
        loss, target, out = nn.BCEWithLogitsLoss, (y == 1).astype(np.float32), 1
    hist = {}
    for backend, graph in (("numpy", True), ("cuda", False), ("cuda", True)):
        model = make_mlp([6, 5, out]).to(backend)
        hist[backend, graph] = model.fit(
            X,
            target,
            epochs=3,
            batch_size=16,
            loss=loss(),
            verbose=0,
            optimizer=optim.SGD(model.parameters(), lr=0.1, momentum=0.5),
            cuda_graph=graph,
        )
        if backend == "cuda":
            assert model._last_step.graphed == graph  # the last batch (of 2 rows) was replayed too
    ref = hist["numpy", True]
    for key in (("cuda", False), ("cuda", True)):
        assert hist[key].keys() == ref.keys()
        for k in ref:
            np.testing.assert_allclose(hist[key][k], ref[k], rtol=1e-4)
    with pytest.raises(TypeError, match="cuda_graph"):
        model.fit(X, target, loss=loss(), optimizer=optim.SGD(model.parameters(), lr=0.1), cuda_graph="yes")


@pytest.mark.cuda
@needs_gpu
def test_linear_and_relu_fuse_into_one_gemm_and_train_the_same():
    """On the GPU, Sequential runs Linear + ReLU as one GEMM launch (bias and
    ReLU in its epilogue); LeakyReLU with a slope, Sigmoid and a profiled run
    are not fused.  Every variant trains like the numpy reference."""
    batches = _batches((16,) * 4)
    for act in (nn.ReLU, lambda: nn.LeakyReLU(0.1), nn.Sigmoid):
        ref = None
        for backend in ("numpy", "cuda"):
            whygpu.manual_seed(1)
            model = nn.Sequential(nn.Linear(12, 9), act(), nn.Linear(9, 7), act(), nn.Linear(7, 4)).to(backend)
            calls = []
            if backend == "cuda":
                be = model._backend
                real = be.matmul_into
                be.matmul_into = lambda *a, _calls=calls, _real=real, **kw: (
                    _calls.append(kw.get("relu", False)),
                    _real(*a, **kw),
                )[1]
            opt = optim.SGD(model.parameters(), lr=0.1)
            step = nn.GraphStep(model, nn.CrossEntropyLoss(), opt, graph=False)
            losses = [float(step(x, y)) for x, y in batches]
            if backend == "cuda":
                del be.matmul_into
                fused = act is nn.ReLU
                # per step: 3 forward GEMMs (2 with a fused ReLU), then the backward ones without
                assert calls[:3] == [fused, fused, False]
            got = (losses, [p.data for p in model.parameters()])
            if ref is None:
                ref = got
            else:
                np.testing.assert_allclose(got[0], ref[0], rtol=1e-4)
                for g, r in zip(got[1], ref[1]):
                    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


# ---- Mixed precision: bf16 tensor-core matmuls, float32 everything else ------------------------


@pytest.mark.cuda
@needs_gpu
def test_mixed_precision_bf16_reaches_96_percent_on_digits():
    """model.to("cuda", precision="bf16"): every matmul (forward and backward) on the bf16
    tensor-core rung, float32 master weights, gradients, optimizer state and sums -- and
    digits still trains to >= 96%.  (Batch 256 and 10 epochs keep it to a minute on the
    emulated GPU; the same recipe gives 97% in float32 with NumPy.)"""
    pytest.importorskip(
        "sklearn", reason="digits are bundled with scikit-learn (pip install '.[digits]' from the source folder)"
    )
    X, y = datasets.load_digits()
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, test_size=0.2, stratify=True, seed=0)
    X_train, X_test = datasets.standardize(X_train, X_test)
    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128, init="he"), nn.ReLU(), nn.Linear(128, 10, init="he"))
    model.to("cuda", precision="bf16")
    assert model.backend == "cuda_mma_bf16" and model._backend.precision == "bf16"
    for p in model.parameters():  # the master weights stay float32 on the GPU
        assert isinstance(p._data, wc.DeviceArray) and p._data.dtype == np.float32
    opt = optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    hist = model.fit(X_train, y_train, epochs=10, batch_size=256, optimizer=opt, loss=nn.CrossEntropyLoss(), verbose=0)
    assert hist["loss"][-1] < hist["loss"][0]
    assert model.evaluate(X_test, y_test)["accuracy"] >= 0.96


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("precision,backend", [("bf16", "cuda_mma_bf16"), ("tf32", "cuda_mma")])
def test_mixed_precision_steps_follow_the_float32_reference_within_the_precision(precision, backend):
    """A few SGD steps in TF32/bf16 against the NumPy float32 reference: close to it at the
    precision's scale, and not identical to it (the products really are rounded)."""
    ref_model, ref_losses, ref_params = run_steps("numpy", OPTIMIZERS["sgd-momentum"])
    model, losses, params = run_steps(backend, OPTIMIZERS["sgd-momentum"])
    u = wc.UNIT_ROUNDOFF[precision]
    np.testing.assert_allclose(losses, ref_losses, rtol=40 * u)
    assert losses[-1] < losses[0]
    worst = max(np.abs(p - q).max() / np.abs(q).max() for p, q in zip(params, ref_params))
    assert u / 100 < worst < 40 * u, worst
    with pytest.raises(ValueError, match="computes in float32, not bf16"):
        make_mlp([4, 2]).to("cuda_smem", precision="bf16")
