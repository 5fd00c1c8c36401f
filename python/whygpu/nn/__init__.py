"""whygpu.nn: a small dense-layer training stack, PyTorch-flavoured, that runs
on any rung of the kernel ladder.

    >>> import whygpu
    >>> from whygpu import nn
    >>> whygpu.manual_seed(0)                                    # doctest: +ELLIPSIS
    Generator(...)
    >>> model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    >>> model = model.to("openmp")                                # doctest: +SKIP
    >>> model.count_params()
    9610

Every matmul of the forward pass (y = x.W^T) and of the backward pass
(dW = dY^T.X, dX = dY.W) runs on the model's back end (``model.to(name)``,
``name`` from :func:`backends`); so does everything else (bias, activations,
loss, optimizer), in compiled code for the kernel back ends; ``"cuda"``
(where a GPU is usable) keeps parameters, activations and gradients in GPU
memory and runs all of it in CUDA kernels; :class:`GraphStep` (which
``fit`` uses there) replays a whole training step as one CUDA graph.  See
``docs/nn.md`` for a worked example and :func:`profile` for where the time goes.
"""

from . import _cuda_backend  # noqa: F401  registers the "cuda" back end with get_backend; touches no GPU
from ._backend import backends
from ._graph import GraphStep
from ._module import Module, Parameter
from ._profile import Profile, profile, step_breakdown
from ._sequential import Sequential
from .layers import Dropout, LeakyReLU, Linear, ReLU, Sigmoid, Softmax, Tanh
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, DeviceLoss, MSELoss

__all__ = [
    "Module",
    "Parameter",
    "Sequential",
    "Linear",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "Dropout",
    "CrossEntropyLoss",
    "MSELoss",
    "BCEWithLogitsLoss",
    "DeviceLoss",
    "GraphStep",
    "backends",
    "profile",
    "Profile",
    "step_breakdown",
]
