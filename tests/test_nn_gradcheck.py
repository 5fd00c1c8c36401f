"""Finite-difference gradient checks, in float64, of every layer and loss of
whygpu.nn, on the NumPy reference back end and on compiled back ends."""

import numpy as np
import pytest

import whygpu
from whygpu import nn

BACKENDS = [b for b in ("numpy", "packed", "openmp") if b in nn.backends()]
EPS = 1e-6


def numeric_grad(f, arr):
    """Central differences of the scalar function f() with respect to arr (in place)."""
    g = np.zeros_like(arr)
    it = np.nditer(arr, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = arr[i]
        arr[i] = old + EPS
        fp = f()
        arr[i] = old - EPS
        fm = f()
        arr[i] = old
        g[i] = (fp - fm) / (2 * EPS)
    return g


def assert_close(analytic, numeric, what):
    err = np.max(np.abs(analytic - numeric)) / max(1.0, np.max(np.abs(numeric)))
    assert err < 1e-6, f"{what}: max relative error {err:.2e}\nanalytic\n{analytic}\nnumeric\n{numeric}"


def check_layer(layer, x, backend, reseed=None):
    """Check dL/dx and dL/dparams of L = sum(layer(x) * R)."""
    layer.to(backend, dtype=np.float64)
    rng = np.random.default_rng(1)

    def forward():
        if reseed is not None:
            whygpu.manual_seed(reseed)  # the same dropout mask every time
        return layer.forward(x)

    R = rng.standard_normal(forward().shape)

    def f():
        return float(np.sum(forward() * R))

    f()
    layer.zero_grad()
    dx = layer.backward(R).copy()
    assert_close(dx, numeric_grad(f, x), f"{layer!r} input gradient on {backend}")
    for name, p in layer.named_parameters():
        assert_close(p.grad.copy(), numeric_grad(f, p.data), f"{layer!r} {name} gradient on {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Linear(4, 3),
        lambda: nn.Linear(5, 2, bias=False),
        lambda: nn.Linear(3, 4, init="he"),
        lambda: nn.Linear(3, 4, init="xavier"),
        nn.ReLU,
        lambda: nn.LeakyReLU(0.1),
        nn.Sigmoid,
        nn.Tanh,
        nn.Softmax,
    ],
    ids=["linear", "linear-nobias", "linear-he", "linear-xavier", "relu", "leaky", "sigmoid", "tanh", "softmax"],
)
def test_layer_gradients(make, backend):
    whygpu.manual_seed(0)
    layer = make()
    n_in = getattr(layer, "in_features", 5)
    x = np.random.default_rng(2).standard_normal((3, n_in))
    x[np.abs(x) < 1e-3] = 0.5  # keep ReLU kinks away from the finite-difference step
    check_layer(layer, x, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_gradient_with_fixed_mask(backend):
    layer = nn.Dropout(0.4)
    x = np.random.default_rng(3).standard_normal((4, 6))
    check_layer(layer, x, backend, reseed=7)
    whygpu.manual_seed(7)
    y = layer.to(backend).forward(x)
    kept = y != 0
    assert 0 < kept.sum() < kept.size  # some dropped, some kept
    np.testing.assert_allclose(y[kept], x[kept] / 0.6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_eval_is_identity(backend):
    layer = nn.Dropout(0.5).to(backend, dtype=np.float64).eval()
    x = np.random.default_rng(4).standard_normal((3, 5))
    np.testing.assert_array_equal(layer(x), x)
    g = np.random.default_rng(5).standard_normal((3, 5))
    np.testing.assert_array_equal(layer.backward(g), g)


def check_loss(loss_fn, out, target, backend):
    loss_fn.to(backend)

    def f():
        return loss_fn(out, target)

    f()
    g = loss_fn.backward().copy()
    assert_close(g, numeric_grad(f, out), f"{loss_fn!r} on {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_gradient(backend):
    rng = np.random.default_rng(6)
    check_loss(nn.CrossEntropyLoss(), rng.standard_normal((5, 4)) * 3, np.array([0, 3, 1, 1, 2]), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mse_gradient(backend):
    rng = np.random.default_rng(7)
    check_loss(nn.MSELoss(), rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bce_with_logits_gradient(backend):
    rng = np.random.default_rng(8)
    check_loss(nn.BCEWithLogitsLoss(), rng.standard_normal((4, 2)) * 4, rng.uniform(0, 1, (4, 2)), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_network_gradient(backend):
    """Backprop through a stack (all parameters and the input) against finite differences."""
    whygpu.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.LeakyReLU(0.2), nn.Linear(5, 3))
    model.to(backend, dtype=np.float64)
    loss_fn = nn.CrossEntropyLoss()
    x = np.random.default_rng(9).standard_normal((4, 4))
    y = np.array([0, 2, 1, 2])

    def f():
        return loss_fn(model.forward(x), y)

    f()
    model.zero_grad()
    dx = model.backward(loss_fn.backward(), input_grad=True).copy()
    assert_close(dx, numeric_grad(f, x), f"network input on {backend}")
    for name, p in model.named_parameters():
        assert_close(p.grad.copy(), numeric_grad(f, p.data), f"network {name} on {backend}")


def test_loss_values_match_definitions():
    """The losses compute what their docstrings say (float64, numpy and compiled)."""
    rng = np.random.default_rng(10)
    z = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, 6)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    t = rng.uniform(0, 1, (6, 4))
    s = 1 / (1 + np.exp(-z))
    for be in BACKENDS:
        assert nn.CrossEntropyLoss().to(be)(z, y) == pytest.approx(-np.log(p[np.arange(6), y]).mean(), rel=1e-12)
        assert nn.MSELoss().to(be)(z, t) == pytest.approx(((z - t) ** 2).mean(), rel=1e-12)
        bce = -(t * np.log(s) + (1 - t) * np.log(1 - s)).mean()
        assert nn.BCEWithLogitsLoss().to(be)(z, t) == pytest.approx(bce, rel=1e-10)


def test_extreme_logits_stay_finite():
    """Softmax-CE, sigmoid and BCE must not overflow for huge logits."""
    z = np.array([[1000.0, -1000.0, 0.0], [-800.0, 800.0, 10.0]], dtype=np.float32)
    for be in BACKENDS:
        ce = nn.CrossEntropyLoss().to(be)
        assert ce(z, np.array([0, 0])) == pytest.approx(1600.0 / 2, rel=1e-5)
        assert np.all(np.isfinite(ce.backward()))
        sig = nn.Sigmoid().to(be)
        out = sig(z)
        assert np.all(np.isfinite(out)) and out[0, 0] == 1.0 and out[0, 1] == 0.0
        bce = nn.BCEWithLogitsLoss().to(be)
        assert np.isfinite(bce(z, np.ones_like(z)))
