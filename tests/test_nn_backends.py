"""The same model and data give the same results on every back end; the
compiled element-wise ops agree with the NumPy reference, serial and parallel."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import whygpu
from whygpu import _nn_core, nn, optim
from whygpu.nn._backend import NUMPY, get_backend

KERNELS = whygpu.available_kernels(device="cpu")  # CUDA kernels are float32-only
FAST = [k for k in KERNELS if k not in ("python", "cython", "naive")]


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):  # a shared 2-core machine: keep OpenBLAS from oversubscribing
        yield


def make_mlp(sizes, seed=0, act=nn.ReLU):
    whygpu.manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def train_steps(backend, sizes, X, y, steps, opt_factory, dtype=np.float32, seed=0):
    model = make_mlp(sizes, seed).to(backend, dtype=dtype)
    loss_fn = nn.CrossEntropyLoss()
    opt = opt_factory(model.parameters())
    losses = []
    for _s in range(steps):
        logits = model(X)
        losses.append(loss_fn(logits, y))
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    return np.array(losses), [p.data.copy() for p in model.parameters()]


@pytest.mark.parametrize("backend", KERNELS)
def test_same_loss_on_every_backend(backend):
    small = backend in ("python", "cython", "naive")
    sizes = [6, 5, 3] if backend == "python" else ([20, 16, 4] if small else [64, 48, 32, 10])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8 if backend == "python" else 32, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], X.shape[0])

    def sgd(p):
        return optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4)

    ref_losses, ref_params = train_steps("numpy", sizes, X, y, 5, sgd)
    losses, params = train_steps(backend, sizes, X, y, 5, sgd)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4, atol=1e-5)
    for p, q in zip(params, ref_params):
        np.testing.assert_allclose(p, q, rtol=1e-3, atol=1e-4)
    assert losses[-1] < losses[0]  # it learns


@pytest.mark.parametrize("backend", FAST)
def test_adam_and_float64_agree(backend):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 12))
    y = rng.integers(0, 5, 40)

    def adam(p):
        return optim.Adam(p, lr=1e-2, weight_decay=1e-3)

    ref, ref_p = train_steps("numpy", [12, 10, 5], X, y, 6, adam, dtype=np.float64)
    got, got_p = train_steps(backend, [12, 10, 5], X, y, 6, adam, dtype=np.float64)
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    for p, q in zip(got_p, ref_p):
        np.testing.assert_allclose(p, q, rtol=1e-9, atol=1e-12)


def test_threads_do_not_change_results():
    if "openmp" not in KERNELS:
        pytest.skip("the openmp kernel is unavailable in this build")
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 150)).astype(np.float32)  # big enough for the parallel paths
    y = rng.integers(0, 10, 300)

    def sgd(p):
        return optim.SGD(p, lr=0.05, momentum=0.9)

    old = whygpu.get_num_threads()
    try:
        whygpu.set_num_threads(1)
        one, p1 = train_steps("openmp", [150, 128, 10], X, y, 3, sgd)
        whygpu.set_num_threads(2)
        two, p2 = train_steps("openmp", [150, 128, 10], X, y, 3, sgd)
    finally:
        whygpu.set_num_threads(old)
    np.testing.assert_allclose(two, one, rtol=1e-5)
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_to_keeps_values_and_switches_backend():
    model = make_mlp([5, 4, 3])
    before = [p.data.copy() for p in model.parameters()]
    for be in [b for b in nn.backends() if b == "numpy" or b in KERNELS]:
        model.to(be)
        assert model.backend == be
        assert all(layer.backend == be for layer in model)
        for p, q in zip(model.parameters(), before):
            np.testing.assert_array_equal(p.data, q)
    model.double()
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model(np.ones((2, 5))).dtype == np.float64


# ---- the compiled element-wise ops against the NumPy reference -------------
SIZES = [(0, 7), (1, 1), (3, 5), (257, 263)]  # the last is above the parallel threshold


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_ops_match_numpy(shape, dtype, threads):
    if "packed" not in KERNELS:
        pytest.skip("compiled module unavailable")
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    t = rng.uniform(0, 1, shape).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0])
    old = whygpu.get_num_threads()
    whygpu.set_num_threads(threads)
    try:
        cb = get_backend("openmp" if "openmp" in KERNELS else "packed")
        tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)

        def both(op, *inputs, n_out=1, extra=()):
            outs = []
            for be in (NUMPY, cb):
                bufs = [np.full(shape, np.nan, dtype) for _ in range(n_out)]
                r = getattr(be, op)(*inputs, *bufs, *extra)
                outs.append((r, bufs))
            (r1, o1), (r2, o2) = outs
            for a, c in zip(o1, o2):
                # summation order differs (pairwise in NumPy): allow for cancellation at the array's scale
                scale = max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0
                np.testing.assert_allclose(c, a, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=op)
            if r1 is not None:
                assert r2 == pytest.approx(r1, rel=1e-5 if dtype == np.float32 else 1e-11, abs=1e-9), op

        y1, y2 = x.copy(), x.copy()
        NUMPY.bias_add(y1, b)
        cb.bias_add(y2, b)
        np.testing.assert_allclose(y2, y1, **tol)
        for beta in (0.0, 1.0, 0.5):
            d1 = np.full(shape[1], np.nan if beta == 0 else 1.5, dtype)
            d2 = d1.copy()
            NUMPY.bias_grad(dy, d1, beta)
            cb.bias_grad(dy, d2, beta)
            np.testing.assert_allclose(d2, d1, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)
        both("leaky_relu_fwd", x, extra=(0.0,))
        both("leaky_relu_fwd", x, extra=(0.1,))
        both("leaky_relu_bwd", dy, x, extra=(0.1,))
        both("sigmoid_fwd", x)
        both("tanh_fwd", x)
        s = 1 / (1 + np.exp(-x))
        both("sigmoid_bwd", dy, s)
        both("tanh_bwd", dy, np.tanh(x))
        if shape[1] > 0:
            both("softmax_fwd", x)
            both("softmax_bwd", dy, s)
            both("softmax_xent_bwd", s, labels, extra=(0.25,))
            both("mse_bwd", x, t, extra=(0.5,))
            both("bce_logits_bwd", x, t, extra=(0.5,))
            mask = rng.random(shape) < 0.5
            both("mask_scale", x, mask, extra=(2.0,))
            p1 = np.empty_like(x)
            p2 = np.empty_like(x)
            l1 = NUMPY.softmax_xent_fwd(x, labels, p1)
            l2 = cb.softmax_xent_fwd(x, labels, p2)
            assert l2 == pytest.approx(l1, rel=1e-5 if dtype == np.float32 else 1e-12, abs=1e-9)
            np.testing.assert_allclose(p2, p1, **tol)
        assert cb.mse_fwd(x, t) == pytest.approx(NUMPY.mse_fwd(x, t), rel=1e-5)
        assert cb.bce_logits_fwd(x, t) == pytest.approx(NUMPY.bce_logits_fwd(x, t), rel=1e-5)
        for mom, nest, wd in ((0.0, False, 0.0), (0.9, False, 0.01), (0.9, True, 0.0)):
            ps = [x.copy(), x.copy()]
            bufs = [np.ones(shape, dtype), np.ones(shape, dtype)]
            for be, p, buf in zip((NUMPY, cb), ps, bufs):
                be.sgd_update(p, dy, buf if mom else None, 0.1, mom, wd, nest)
            np.testing.assert_allclose(ps[1], ps[0], **tol)
            np.testing.assert_allclose(bufs[1], bufs[0], **tol)
        ps, ms, vs = [x.copy(), x.copy()], [t.copy(), t.copy()], [t.copy(), t.copy()]
        for be, p, m, v in zip((NUMPY, cb), ps, ms, vs):
            be.adam_update(p, dy, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.01, 1 - 0.9**3, 1 - 0.999**3)
        for a, c in ((ps[1], ps[0]), (ms[1], ms[0]), (vs[1], vs[0])):
            np.testing.assert_allclose(a, c, **tol)
    finally:
        whygpu.set_num_threads(old)


def test_nn_core_rejects_bad_arguments():
    """Calling the binding directly with bad arguments raises; it never crashes."""
    x = np.zeros((4, 3), np.float32)
    y = np.zeros((4, 3), np.float32)
    with pytest.raises(TypeError):
        _nn_core.bias_add([[1.0]], np.zeros(3, np.float32), 1)  # not an ndarray
    with pytest.raises(TypeError):
        _nn_core.tanh_fwd(x, np.zeros((4, 3), np.float64), 1)  # mixed dtypes
    with pytest.raises(TypeError):
        _nn_core.tanh_fwd(x.astype(np.int32), y, 1)
    with pytest.raises(ValueError):
        _nn_core.tanh_fwd(x, np.zeros((4, 2), np.float32), 1)  # shape
    with pytest.raises(ValueError):
        _nn_core.tanh_fwd(np.zeros((3, 4), np.float32).T, y, 1)  # not contiguous
    ro = np.zeros((4, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        _nn_core.tanh_fwd(x, ro, 1)
    with pytest.raises(ValueError):
        _nn_core.tanh_fwd(x, y, 0)  # threads
    with pytest.raises(ValueError):
        _nn_core.bias_add(y, np.zeros(4, np.float32), 1)
    with pytest.raises(ValueError):
        _nn_core.softmax_xent_fwd(x, np.array([0, 1, 2, 3]), y, 1)  # label 3 out of range
    with pytest.raises(TypeError):
        _nn_core.softmax_xent_fwd(x, np.array([0, 1, 2, 1], np.int32), y, 1)
    with pytest.raises(ValueError):
        _nn_core.softmax_xent_fwd(x, np.array([0, 1]), y, 1)
    with pytest.raises(TypeError):
        _nn_core.sgd_update(y, x, None, 0.1, 0.9, 0.0, False, 1)  # momentum without a buffer
    with pytest.raises(ValueError):
        _nn_core.adam_update(y, x, x.copy(), x.copy(), 0.1, 0.9, 0.99, 1e-8, 0.0, 0.0, 0.5, 1)
    with pytest.raises(TypeError):
        _nn_core.mask_scale(x, np.zeros((4, 3), np.float32), y, 1.0, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_bias_relu_and_one_call_optimizer_match_numpy(dtype, threads):
    """The compiled back ends' fewer-calls ops: bias + ReLU in one pass, and
    every parameter's SGD / Adam step in one call (sizes 0, 1 and large)."""
    rng = np.random.default_rng(3)
    y0 = rng.standard_normal((67, 300)).astype(dtype)
    b = rng.standard_normal(300).astype(dtype)
    for bias, relu in ((b, True), (b, False), (None, True), (None, False)):
        y = y0.copy()
        _nn_core.bias_relu(y, bias, relu, threads)
        ref = y0 + (0 if bias is None else b)
        np.testing.assert_array_equal(y, np.maximum(ref, 0) if relu else ref)
    sizes = [0, 1, 7, 5000, 70_001]
    ps = [rng.standard_normal(s).astype(dtype) for s in sizes]
    gs = [rng.standard_normal(s).astype(dtype) for s in sizes]
    ms = [rng.standard_normal(s).astype(dtype) for s in sizes]
    vs = [np.abs(rng.standard_normal(s)).astype(dtype) for s in sizes]
    tol = dict(rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6 if dtype == np.float32 else 1e-13)
    for momentum, nesterov in ((0.0, False), (0.9, False), (0.9, True)):
        p, bufs = [x.copy() for x in ps], [x.copy() for x in ms]
        _nn_core.optimizer_update(
            "sgd", p, gs, bufs if momentum else None, None, [0.1, momentum, 0.01, float(nesterov)], threads
        )
        for got, got_b, p0, g, b0 in zip(p, bufs, ps, gs, ms):
            gi = g + dtype(0.01) * p0
            if momentum:
                bb = dtype(momentum) * b0 + gi
                np.testing.assert_allclose(got_b, bb, **tol)
                np.testing.assert_allclose(
                    got, p0 - dtype(0.1) * (gi + dtype(momentum) * bb if nesterov else bb), **tol
                )
            else:
                np.testing.assert_allclose(got, p0 - dtype(0.1) * gi, **tol)
    b1, b2, lr, eps, wd, t = 0.9, 0.999, 1e-3, 1e-8, 0.01, 4
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    p, m, v = [x.copy() for x in ps], [x.copy() for x in ms], [x.copy() for x in vs]
    _nn_core.optimizer_update("adam", p, gs, m, v, [lr / bc1, b1, b2, eps, wd, 1 / bc2**0.5], threads)
    for got, gm, gv, p0, g, m0, v0 in zip(p, m, v, ps, gs, ms, vs):
        gi = g.astype(np.float64) + wd * p0
        mi, vi = b1 * m0 + (1 - b1) * gi, b2 * v0 + (1 - b2) * gi * gi
        np.testing.assert_allclose(gm, mi, **tol)
        np.testing.assert_allclose(gv, vi, **tol)
        np.testing.assert_allclose(got, p0 - lr / bc1 * mi / (np.sqrt(vi) / np.sqrt(bc2) + eps), **tol)


def test_one_call_optimizer_rejects_bad_arguments():
    p, g = np.zeros(5, np.float32), np.zeros(5, np.float32)
    cases = [
        (("rmsprop", [p], [g], None, None, [0.1, 0, 0, 0], 1), ValueError, "kind"),
        (("sgd", [p], [g, g], None, None, [0.1, 0, 0, 0], 1), ValueError, "same length"),
        (("sgd", [p], [g], None, None, [0.1], 1), ValueError, "4 numbers"),
        (("sgd", [p], [g], None, None, [0.1, 0.9, 0, 0], 1), ValueError, "momentum buffers is needed"),
        (("adam", [p], [g], [g.copy()], None, [1, 1, 1, 1, 1, 1], 1), ValueError, "v is needed"),
        (("sgd", [[0.0] * 5], [g], None, None, [0.1, 0, 0, 0], 1), TypeError, "ndarray"),
        (("sgd", [p], [np.zeros(6, np.float32)], None, None, [0.1, 0, 0, 0], 1), ValueError, "shape"),
        (("sgd", [p], [p], None, None, [0.1, 0, 0, 0], 1), ValueError, "shares memory"),
        (("sgd", [p, np.zeros(5)], [g, np.zeros(5)], None, None, [0.1, 0, 0, 0], 1), TypeError, "one dtype"),
        (("sgd", [p], [g], None, None, [0.1, 0, 0, 0], 0), ValueError, "threads"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            _nn_core.optimizer_update(*args)
    with pytest.raises(ValueError, match="b must be 1-D"):
        _nn_core.bias_relu(np.zeros((3, 4), np.float32), np.zeros(3, np.float32), True, 1)
    with pytest.raises(TypeError, match="ndarray or None"):
        _nn_core.bias_relu(np.zeros((3, 4), np.float32), [0.0] * 4, True, 1)
