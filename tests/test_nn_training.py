"""Training whygpu.nn models end to end: the lessons' data sets are learned."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import whygpu
from whygpu import datasets, nn, optim

FAST = [b for b in ("numpy", "packed", "openmp") if b in nn.backends()]


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):  # a shared 2-core machine: keep OpenBLAS from oversubscribing
        yield


@pytest.mark.parametrize("backend", FAST)
def test_xor_reaches_100_percent(backend):
    X, y = datasets.xor()
    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).to(backend)
    hist = model.fit(
        X,
        y,
        epochs=300,
        batch_size=4,
        optimizer=optim.Adam(model.parameters(), lr=0.05),
        loss=nn.CrossEntropyLoss(),
        verbose=0,
    )
    assert model.evaluate(X, y)["accuracy"] == 1.0
    np.testing.assert_array_equal(model.predict(X).argmax(axis=1), y)
    assert hist["loss"][-1] < 0.01 < hist["loss"][0]


def test_xor_needs_a_hidden_layer():
    """A linear model cannot separate XOR: at most 3 of 4 points right."""
    X, y = datasets.xor()
    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2))
    model.fit(
        X,
        y,
        epochs=300,
        batch_size=4,
        optimizer=optim.Adam(model.parameters(), lr=0.05),
        loss=nn.CrossEntropyLoss(),
        verbose=0,
    )
    assert model.evaluate(X, y)["accuracy"] <= 0.75


@pytest.mark.parametrize("backend", FAST)
def test_line_y_equals_2x(backend):
    X, y = datasets.line(n=100)
    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 1)).to(backend)
    hist = model.fit(
        X, y, epochs=100, batch_size=10, optimizer=optim.SGD(model.parameters(), lr=0.1), loss=nn.MSELoss(), verbose=0
    )
    assert hist["loss"][-1] < 1e-4 and "accuracy" not in hist
    assert model.evaluate(X, y)["loss"] < 1e-4
    assert model[0].weight.data.item() == pytest.approx(2.0, abs=1e-2)
    assert model[0].bias.data.item() == pytest.approx(0.0, abs=1e-2)


def test_noisy_sine_universal_approximation():
    X, y = datasets.sine(n=256, noise=0.0)
    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    model.fit(
        X, y, epochs=300, batch_size=32, optimizer=optim.Adam(model.parameters(), lr=0.01), loss=nn.MSELoss(), verbose=0
    )
    grid = np.linspace(-3, 3, 50, dtype=np.float32).reshape(-1, 1)
    assert np.max(np.abs(model.predict(grid) - np.sin(grid))) < 0.05


def test_two_spirals():
    X, y = datasets.spirals(n_per_class=100)
    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    hist = model.fit(
        X,
        y,
        epochs=150,
        batch_size=32,
        optimizer=optim.Adam(model.parameters(), lr=0.01),
        loss=nn.CrossEntropyLoss(),
        verbose=0,
    )
    assert hist["accuracy"][-1] >= 0.97


def test_bce_binary_classifier():
    X, y = datasets.spirals(n_per_class=50, turns=0.5)
    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.Sigmoid(), nn.Linear(32, 1))
    hist = model.fit(
        X,
        y.astype(np.float32),
        epochs=150,
        batch_size=16,
        optimizer=optim.SGD(model.parameters(), lr=0.5, momentum=0.9),
        loss=nn.BCEWithLogitsLoss(),
        verbose=0,
    )
    assert hist["accuracy"][-1] >= 0.95
    assert np.mean((model.predict(X)[:, 0] > 0) == (y == 1)) >= 0.95


@pytest.mark.parametrize("backend", ["numpy", "openmp"])
@pytest.mark.parametrize("opt", ["sgd-momentum", "adam"])
def test_digits_96_percent(backend, opt):
    pytest.importorskip(
        "sklearn", reason="digits are bundled with scikit-learn (pip install '.[digits]' from the source folder)"
    )
    if backend not in nn.backends():
        pytest.skip(f"{backend} unavailable")
    X, y = datasets.load_digits()
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, test_size=0.2, stratify=True, seed=0)
    X_train, X_test = datasets.standardize(X_train, X_test)
    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128, init="he"), nn.ReLU(), nn.Linear(128, 10, init="he")).to(backend)
    if opt == "adam":
        optimizer = optim.Adam(model.parameters(), lr=1e-3)
    else:
        optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hist = model.fit(
        X_train,
        y_train,
        epochs=20,
        batch_size=64,
        optimizer=optimizer,
        loss=nn.CrossEntropyLoss(),
        validation_data=(X_test, y_test),
        verbose=0,
    )
    assert len(hist["val_accuracy"]) == 20
    acc = model.evaluate(X_test, y_test)["accuracy"]
    assert acc == hist["val_accuracy"][-1]
    assert acc >= (0.96 if opt == "sgd-momentum" else 0.95)  # Adam lr 1e-3 is the slower learner here


def test_stratified_split():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    X = np.arange(len(y) * 2, dtype=np.float32).reshape(-1, 2)
    X_tr, X_te, y_tr, y_te = datasets.train_test_split(X, y, test_size=0.2, seed=1)
    assert np.bincount(y_te).tolist() == [10, 6, 3, 1]
    assert len(y_tr) + len(y_te) == len(y)
    assert sorted(np.concatenate([X_tr[:, 0], X_te[:, 0]]).tolist()) == X[:, 0].tolist()  # a partition
    np.testing.assert_array_equal(y_te, y[(X_te[:, 0] // 2).astype(int)])  # rows stay with their labels
    for a, b in zip(datasets.train_test_split(X, y, seed=1), (X_tr, X_te, y_tr, y_te)):
        np.testing.assert_array_equal(a, b)  # same seed, same split


def test_datasets_shapes_and_seeds():
    X, y = datasets.line(n=7, seed=3)
    assert X.shape == (7, 1) and y.shape == (7, 1) and X.dtype == np.float32
    np.testing.assert_allclose(y, 2 * X, rtol=1e-6)
    X, y = datasets.sine(n=9)
    assert X.shape == (9, 1) and np.all(np.abs(X) <= np.pi)
    X, y = datasets.spirals(n_per_class=20)
    assert X.shape == (40, 2) and np.bincount(y).tolist() == [20, 20] and y.dtype == np.int64
    np.testing.assert_array_equal(datasets.spirals(20, seed=5)[0], datasets.spirals(20, seed=5)[0])
    with pytest.raises(ValueError):
        datasets.sine(n=0)
    with pytest.raises(ValueError):
        datasets.train_test_split(X, y, test_size=1.5)


def test_load_digits_without_sklearn(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        datasets.load_digits()


def test_manual_seed_reproducible():
    def run():
        whygpu.manual_seed(42)
        X, y = datasets.spirals(30)
        m = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
        h = m.fit(
            X,
            y,
            epochs=3,
            batch_size=8,
            optimizer=optim.SGD(m.parameters(), lr=0.1),
            loss=nn.CrossEntropyLoss(),
            verbose=0,
        )
        return h["loss"], m.parameters()[0].data.copy()

    (l1, w1), (l2, w2) = run(), run()
    assert l1 == l2
    np.testing.assert_array_equal(w1, w2)
    whygpu.manual_seed(43)
    w3 = nn.Linear(2, 16).weight.data
    assert not np.array_equal(w1, w3)


def test_fit_progress_bar(capsys):
    X, y = datasets.xor()
    m = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = optim.SGD(m.parameters(), lr=0.1)
    m.fit(X, y, epochs=2, batch_size=2, optimizer=opt, loss=nn.CrossEntropyLoss())  # not a TTY: silent
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    m.fit(X, y, epochs=2, batch_size=2, optimizer=opt, loss=nn.CrossEntropyLoss(), verbose=1)
    assert "Epoch 2/2" in capsys.readouterr().err
    m.fit(X, y, epochs=2, batch_size=2, optimizer=opt, loss=nn.CrossEntropyLoss(), verbose=2)
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "accuracy" in out


def test_gradients_accumulate_until_zero_grad():
    whygpu.manual_seed(0)
    lin = nn.Linear(3, 2)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    g = np.ones((4, 2), np.float32)
    lin(x)
    lin.backward(g)
    once = lin.weight.grad.copy()
    lin.backward(g)
    np.testing.assert_allclose(lin.weight.grad, 2 * once, rtol=1e-6)
    lin.zero_grad()
    np.testing.assert_array_equal(lin.weight.grad, 0)
    lin.backward(g)
    np.testing.assert_allclose(lin.weight.grad, once, rtol=1e-6)
    np.testing.assert_allclose(lin.bias.grad, [4, 4])
    np.testing.assert_allclose(once, g.T @ x, rtol=1e-6)  # dW = dY^T X


def test_parameters_read_and_assign():
    lin = nn.Linear(3, 2)
    lin.weight.data = np.arange(6).reshape(2, 3)
    lin.bias.data = [1.0, -1.0]
    np.testing.assert_array_equal(lin(np.eye(3, dtype=np.float32)), np.arange(6).reshape(2, 3).T + [1, -1])
    lin.weight.grad = np.full((2, 3), 0.5)
    opt = optim.SGD(lin.parameters(), lr=1.0)
    lin.bias.grad = np.zeros(2)
    opt.step()
    np.testing.assert_allclose(lin.weight.data, np.arange(6).reshape(2, 3) - 0.5)
    with pytest.raises(ValueError, match="shape"):
        lin.weight.data = np.zeros((3, 2))


def test_initialisations():
    whygpu.manual_seed(0)
    d = nn.Linear(400, 300)
    assert np.abs(d.weight.data).max() <= 1 / 20 and np.abs(d.bias.data).max() <= 1 / 20
    assert d.weight.data.std() == pytest.approx(1 / 20 / np.sqrt(3), rel=0.05)
    he = nn.Linear(400, 300, init="he")
    assert he.weight.data.std() == pytest.approx(np.sqrt(2 / 400), rel=0.05) and not he.bias.data.any()
    xa = nn.Linear(400, 300, init="xavier")
    bound = np.sqrt(6 / 700)
    assert np.abs(xa.weight.data).max() <= bound
    assert xa.weight.data.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    with pytest.raises(ValueError, match="init"):
        nn.Linear(2, 2, init="orthogonal")
