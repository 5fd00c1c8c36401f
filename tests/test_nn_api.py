"""whygpu.nn's user-facing API: summary, profiling, bad input, repr."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import whygpu
from whygpu import nn, optim


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def mlp(*sizes):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def test_summary_parameter_counts():
    lines = []
    model = mlp(784, 512, 256, 10)
    model.summary(print_fn=lines.append)
    text = lines[0]
    assert model.count_params() == 535_818
    assert "Total params: 535,818" in text and "2.14 MB" in text
    assert "401,920" in text and "131,328" in text and "2,570" in text and "(batch, 256)" in text
    big = mlp(1000, 512, 256, 10)
    # 1000*512+512 + 512*256+256 + 256*10+10 = 646,410 parameters, 2.59 MB as float32
    assert big.count_params() == 646_410
    out = []
    big.summary(print_fn=out.append)
    assert "Total params: 646,410" in out[0] and "2.59 MB" in out[0]
    out = []
    big.double().summary(print_fn=out.append)
    assert "5.17 MB as float64" in out[0]


def test_summary_prints(capsys):
    mlp(4, 3, 2).summary()
    assert "Total params: 23" in capsys.readouterr().out


@pytest.mark.parametrize("backend", [b for b in ("numpy", "openmp") if b in nn.backends()])
def test_profile_breakdown_adds_up(backend):
    whygpu.manual_seed(0)
    model = mlp(128, 96, 64, 10).to(backend)
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 128)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    prof = nn.step_breakdown(model, x, y, loss_fn, opt, steps=5, warmup=1)
    b = prof.breakdown()
    assert b["steps"] == 5 and b["backend"] == backend
    rows = {r["name"]: r for r in b["rows"]}
    assert set(rows) >= {"0: Linear(128, 96)", "1: ReLU()", "loss", "optimizer", "outside (your loop, Python)"}
    assert sum(r["total_s"] for r in b["rows"]) == pytest.approx(b["wall_s"], rel=1e-6)
    assert sum(r["share"] for r in b["rows"]) == pytest.approx(1.0, rel=1e-6)
    assert b["matmul_s"] == pytest.approx(sum(r["matmul_s"] for r in b["rows"]))
    assert 0 < b["matmul_share"] < 1
    assert rows["0: Linear(128, 96)"]["matmul_s"] > 0 and rows["1: ReLU()"]["matmul_s"] == 0
    # forward: 3 matmuls; backward: 3 dW + 2 dX (none for the input) -> 8 per step
    assert sum(r["matmul_calls"] for r in b["rows"]) == 8 * 5
    assert rows["0: Linear(128, 96)"]["gflop"] == pytest.approx(5 * 2 * 2 * 64 * 128 * 96 / 1e9)
    assert all(r["matmul_s"] <= r["total_s"] + 1e-9 for r in b["rows"])
    assert "matrix multiplication:" in prof.table() and "ms/step" in str(prof)
    # profiling is off again afterwards
    assert all(layer._prof is None for layer in model)


def test_profile_context_with_fit():
    whygpu.manual_seed(0)
    model = mlp(8, 16, 3)
    X = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    y = np.arange(50) % 3
    with nn.profile(model) as prof:
        model.fit(
            X,
            y,
            epochs=2,
            batch_size=10,
            optimizer=optim.Adam(model.parameters()),
            loss=nn.CrossEntropyLoss(),
            verbose=0,
        )
    assert prof.steps == 10
    assert prof.loss.total_s > 0 and prof.optimizer.total_s > 0
    with pytest.raises(RuntimeError, match="already active"):
        with nn.profile(model):
            with nn.profile(model):
                pass


def test_loss_follows_the_model_backend():
    if "packed" not in nn.backends():
        pytest.skip("compiled back ends unavailable")
    model = mlp(4, 3).to("packed")
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(model(np.ones((2, 4))), [0, 1])
    assert loss_fn._be.name == "packed"
    loss_fn(np.ones((2, 3), np.float32), [0, 1])  # an array the model did not make: NumPy
    assert loss_fn._be.name == "numpy"
    loss_fn.to("packed")(np.ones((2, 3), np.float32), [0, 1])
    assert loss_fn._be.name == "packed" and loss_fn.backend == "packed"


def test_call_returns_an_array_the_caller_owns():
    model = mlp(3, 4, 2)
    a = model(np.ones((2, 3)))
    b = model(np.zeros((2, 3)))
    assert not np.array_equal(a, b)  # the first result was not overwritten by the second call
    np.testing.assert_allclose(a, model(np.ones((2, 3))))


def test_predict_and_eval_mode():
    whygpu.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    X = np.random.default_rng(0).standard_normal((300, 5)).astype(np.float32)
    p1 = model.predict(X, batch_size=64)
    p2 = model.predict(X)
    np.testing.assert_allclose(p1, p2, rtol=1e-6)  # dropout off in predict, whatever the batching
    assert p1.shape == (300, 3) and model.training  # mode restored


def test_repr():
    model = mlp(4, 3, 2)
    assert "(0): Linear(4, 3)" in repr(model) and "(1): ReLU()" in repr(model)
    assert repr(nn.LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert repr(nn.Dropout(0.1)) == "Dropout(p=0.1)"
    assert "SGD(lr=0.1" in repr(optim.SGD(model.parameters(), lr=0.1))


# ---- bad input: clear errors ------------------------------------------------
def test_wrong_feature_count():
    model = mlp(784, 10)
    with pytest.raises(ValueError, match="784 input features"):
        model(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 784\)"):
        model[0](np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        model(np.zeros(784, np.float32))
    with pytest.raises(TypeError, match="numeric"):
        model(np.array([["a"] * 784]))


def test_labels_out_of_range():
    loss_fn = nn.CrossEntropyLoss()
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        loss_fn(logits, [0, 1, 4])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        loss_fn(logits, [0, -1, 2])
    with pytest.raises(TypeError, match="integer class labels"):
        loss_fn(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="one label per row"):
        loss_fn(logits, [0, 1])
    model = mlp(2, 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        model.fit(
            np.zeros((4, 2)),
            [0, 1, 2, 3],
            optimizer=optim.SGD(model.parameters(), lr=0.1),
            loss=nn.CrossEntropyLoss(),
            verbose=0,
        )


def test_nan_in_data():
    model = mlp(3, 2)
    X = np.ones((5, 3), np.float32)
    X[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN \(first at index \(2, 1\)\)"):
        model(X)
    with pytest.raises(ValueError, match="NaN"):
        model.fit(
            X, np.zeros(5, int), optimizer=optim.SGD(model.parameters(), lr=0.1), loss=nn.CrossEntropyLoss(), verbose=0
        )
    X[2, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        model.predict(X)
    with pytest.raises(ValueError, match="NaN"):
        nn.MSELoss()(np.ones((2, 1), np.float32), [1.0, np.nan])
    big = np.full((4, 3), 3e38, np.float32)  # finite, though their sum overflows
    assert model(big).shape == (4, 2)


def test_unknown_backend():
    model = mlp(3, 2)
    with pytest.raises(ValueError, match="valid back ends here are: numpy"):
        model.to("tpu")
    with pytest.raises(ValueError, match="unknown back end"):
        nn.CrossEntropyLoss().to("gpu9")
    with pytest.raises(TypeError):
        model.to(7)
    with pytest.raises(TypeError, match="float32 or float64"):
        model.to(dtype=np.int32)
    assert model.backend == "numpy"  # unchanged after the failures


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.Linear(3, 2).backward(np.zeros((1, 2)))
    with pytest.raises(RuntimeError, match="before forward"):
        mlp(3, 4, 2).backward(np.zeros((1, 2)))
    with pytest.raises(RuntimeError, match="before the loss was computed"):
        nn.CrossEntropyLoss().backward()
    model = mlp(3, 2)
    model(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"expected \(4, 2\)"):
        model.backward(np.zeros((5, 2)))


def test_bad_hyperparameters():
    params = mlp(2, 2).parameters()
    with pytest.raises(ValueError):
        optim.SGD(params, lr=-1)
    with pytest.raises(TypeError):
        optim.SGD(params, lr="0.1")
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        optim.Adam(params, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError):
        optim.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError):
        nn.Dropout(1.5)
    with pytest.raises(ValueError):
        nn.Linear(0, 3)
    with pytest.raises(TypeError):
        nn.Linear(2.5, 3)
    with pytest.raises(TypeError):
        nn.Sequential(nn.Linear(2, 2), "relu")
    model = mlp(2, 2)
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="loss="):
        model.fit(np.zeros((2, 2)), [0, 1], optimizer=opt)
    with pytest.raises(TypeError, match="optimizer="):
        model.fit(np.zeros((2, 2)), [0, 1], loss=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="samples"):
        model.fit(np.zeros((3, 2)), [0, 1], optimizer=opt, loss=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(np.zeros((2, 2)), [0, 1], batch_size=0, optimizer=opt, loss=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="empty batch"):
        nn.CrossEntropyLoss()(np.zeros((0, 3), np.float32), np.zeros(0, int))


def test_divergence_is_reported():
    model = mlp(2, 8, 1)
    X = np.random.default_rng(0).standard_normal((32, 2)).astype(np.float32) * 100
    y = X[:, :1] * 1e3
    with pytest.raises(FloatingPointError, match="diverged"):
        model.fit(
            X,
            y,
            epochs=50,
            batch_size=8,
            optimizer=optim.SGD(model.parameters(), lr=10.0),
            loss=nn.MSELoss(),
            verbose=0,
        )
