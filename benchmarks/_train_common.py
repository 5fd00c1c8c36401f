"""The training step that benchmarks/test_bench_train.py and
benchmarks/train_step_table.py measure: the 784-512-256-10 MLP, ReLU,
softmax cross-entropy, plain SGD, float32, synthetic data -- one forward
pass, one backward pass and one parameter update.

Back ends: ``numpy`` (NumPy + its BLAS, threads pinned with threadpoolctl),
any whygpu kernel (threads set with whygpu.set_num_threads), ``cuda`` (the
GPU, when one is usable: benchmarks/test_bench_train_cuda.py), and ``torch``
(PyTorch CPU, torch.set_num_threads) when PyTorch is installed.
"""

from __future__ import annotations

import contextlib

import numpy as np
from threadpoolctl import threadpool_limits

import whygpu
from whygpu import nn, optim

SIZES = (784, 512, 256, 10)
BATCHES = (32, 256, 1024)
THREADS = (1, 2)
LR = 0.01


def step_flops(batch: int) -> int:
    """Floating-point operations in the matmuls of one step: forward x.W^T per
    layer, backward dW = dY^T.X per layer and dX = dY.W for all but the first
    (the data needs no gradient)."""
    pairs = list(zip(SIZES[:-1], SIZES[1:]))
    macs = sum(i * o for i, o in pairs) * 2 + sum(i * o for i, o in pairs[1:])
    return 2 * batch * macs


def data(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], batch)
    return x, y


@contextlib.contextmanager
def threads(backend: str, n: int):
    """Run with n threads on this back end (BLAS pinned too), restoring afterwards."""
    old = whygpu.get_num_threads()
    torch_old = None
    if backend == "torch":
        import torch

        torch_old = torch.get_num_threads()
        torch.set_num_threads(n)
    whygpu.set_num_threads(n)
    try:
        with threadpool_limits(n if backend in ("numpy", "torch") else 1):
            yield
    finally:
        whygpu.set_num_threads(old)
        if torch_old is not None:
            import torch

            torch.set_num_threads(torch_old)


def whygpu_step(backend: str, batch: int, resident: bool = False, graph: bool = False):
    """(step function, (model, x, y, loss_fn, optimizer)) for a whygpu.nn back end.

    On a GPU back end the batch is a NumPy array copied to the GPU every step,
    or, with ``resident``, uploaded once and kept there; the step waits for
    the GPU to finish (its work is asynchronous), so timing it is honest.
    With ``graph`` the step is an ``nn.GraphStep``: replayed as one CUDA graph
    from its third call on (the first two warm up and capture it)."""
    whygpu.manual_seed(0)
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(nn.Linear(SIZES[i], SIZES[i + 1]))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).to(backend)
    loss_fn = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=LR)
    x, y = data(batch)
    be = model._backend
    gpu = be.device is not None
    if resident:
        if not gpu:
            raise ValueError(f"resident data needs a GPU back end, not {backend!r}")
        x, y = be.asarray(x), be.asarray(y)

    graph_step = nn.GraphStep(model, loss_fn, opt) if graph else None

    def step():
        if graph_step is not None:
            loss = graph_step(x, y)
        else:
            loss = loss_fn(model(x), y)
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
        if gpu:
            be.synchronize()  # the step is over when the GPU is done with its updates
        return float(loss)

    return step, (model, x, y, loss_fn, opt)


def torch_step(batch: int, device: str = "cpu", resident: bool = True):
    """PyTorch's step of the same MLP.  On ``device="cuda"`` it runs in strict
    float32 (no TF32, as whygpu's kernels) and each step waits for the GPU;
    ``resident=False`` copies the batch from host memory every step."""
    import torch

    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(torch.nn.Linear(SIZES[i], SIZES[i + 1]))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    xn, yn = data(batch)
    x, y = torch.from_numpy(xn), torch.from_numpy(yn)
    if resident:
        x, y = x.to(device), y.to(device)

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        return loss.item()  # waits for the GPU

    return step


def matmul_share(backend: str, batch: int, steps: int = 5) -> float:
    """Fraction of a whygpu.nn step spent in matmuls, from the profiler."""
    _, (model, x, y, loss_fn, opt) = whygpu_step(backend, batch)
    return nn.step_breakdown(model, x, y, loss_fn, opt, steps=steps, warmup=1).matmul_share


def breakdown(backend: str, batch: int, resident: bool = False, steps: int = 5) -> dict:
    """The profiler's breakdown of a step (Profile.breakdown(): matmul and
    host <-> device copy seconds, shares, bytes)."""
    _, (model, x, y, loss_fn, opt) = whygpu_step(backend, batch, resident)
    return nn.step_breakdown(model, x, y, loss_fn, opt, steps=steps, warmup=1).breakdown()
