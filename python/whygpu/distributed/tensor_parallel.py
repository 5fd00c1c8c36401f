"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019, section 3): each layer's matrices split across
the ranks, so that P processes hold and multiply 1/P of every pair of Linear layers.

    import whygpu.distributed as dist
    whygpu.manual_seed(0)                               # the same full model on every rank
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10)).to("openmp")
    tp = dist.tensor_parallel(model)                    # rank r keeps its slices of both Linears
    out = tp(x)                                         # every rank: the same full batch, the same output
    loss = loss_fn(out, y); tp.zero_grad(); tp.backward(loss_fn.backward()); opt.step()

Why it works: an MLP block ``Y = act(X A^T) B^T`` with A (hidden x in) cut by rows into A_r and B
(out x hidden) cut by columns into B_r needs no communication between the two matmuls, since the
element-wise activation of a column slice is the slice of the activation:

* :class:`ColumnParallelLinear` holds rows [lo, hi) of A and of its bias: ``H_r = X A_r^T + a_r`` is
  columns [lo, hi) of one process's H.  Forward needs nothing from the others; its backward needs
  every rank's part of ``dX = sum_r dH_r A_r``: one allreduce (Megatron's "f": identity forward,
  allreduce backward).
* :class:`RowParallelLinear` holds columns [lo, hi) of B: ``X_r B_r^T`` is one rank's share of the
  sum ``Y = H B^T``; one allreduce adds the shares and the bias is added after it, on every rank
  (Megatron's "g": allreduce forward, identity backward).  Its backward needs only the full dY,
  which every rank has.

So a step costs one allreduce of the activations (batch x out_features) forward and one of dX
(batch x in_features) backward per pair, and each rank holds 1/P of the pair's weights.  The
first layer of a model skips its dX (and so its allreduce) unless ``backward(g, input_grad=True)``
asks for it, as :class:`whygpu.nn.Sequential` and ``DataParallel`` skip that matmul.  Widths need
not divide by P: rank r takes ``share(width, P, r)`` (the first ``width % P`` ranks one more).
Every layer counts its allreduces (:class:`Traffic`); ``model.traffic()`` sums them.

Dropout is element-wise too: one between the column and the row layer draws the mask of the whole
hidden width (batch x hidden, so that the generator advances alike on every rank, which
:func:`tensor_parallel` gives rank 0's state) and keeps its columns [lo, hi); under
``DataParallel`` it also keeps its rows of the global batch, so P ranks apply exactly the mask one
process draws.  A Dropout outside the pairs is replicated and draws the same mask on every rank.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _random
from ..nn._backend import DeviceBackend
from ..nn._module import Module, Parameter
from ..nn._sequential import Sequential
from ..nn.layers import Dropout, LeakyReLU, Linear, ReLU, Sigmoid, Tanh
from ._runtime import MPI
from ._runtime import comm as _world
from ._shares import share

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "TensorParallel", "Traffic", "tensor_parallel"]

# element-wise activations: applied to a slice of the hidden layer, they give the slice of the result
_ELEMENTWISE = (ReLU, LeakyReLU, Sigmoid, Tanh)
# what may stand between a column and a row layer: those, and Dropout (its mask cut by columns)
_BETWEEN = (*_ELEMENTWISE, Dropout)


@dataclass
class Traffic:
    """The allreduces a layer (or a model) started: how many, and the bytes of the buffer each summed
    (batch x features x itemsize; the bytes on the wire are about 2 (P - 1) / P of that per rank)."""

    forward_calls: int = 0
    forward_bytes: int = 0
    backward_calls: int = 0
    backward_bytes: int = 0

    def __iadd__(self, other: Traffic) -> Traffic:
        self.forward_calls += other.forward_calls
        self.forward_bytes += other.forward_bytes
        self.backward_calls += other.backward_calls
        self.backward_bytes += other.backward_bytes
        return self


class _Split(Module):
    """What both split layers share: the slice [lo, hi) of the split dimension this rank holds, the
    communicator, the allreduce (with its count) and the parameters."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, lo: int, hi: int, full: int, comm):
        super().__init__()
        self.comm = comm
        self.lo, self.hi, self.full = lo, hi, full  # this rank's [lo, hi) of `full` (out or in features)
        self._dtype = np.dtype(weight.dtype)
        self.weight = Parameter(np.array(weight, dtype=self._dtype), "weight")
        self.bias = None if bias is None else Parameter(np.array(bias, dtype=self._dtype), "bias")
        self.traffic = Traffic()
        self._x: np.ndarray | None = None
        self._host: np.ndarray | None = None  # a GPU back end's host copy for the allreduce

    def named_parameters(self):
        yield "weight", self.weight
        if self.bias is not None:
            yield "bias", self.bias

    def _allreduce(self, buf, backward: bool) -> None:
        """buf = the sum over the ranks of every rank's buf, in place (through the host on a GPU)."""
        be = self._backend
        n = int(np.prod(buf.shape)) * self._dtype.itemsize
        if backward:
            self.traffic.backward_calls += 1
            self.traffic.backward_bytes += n
        else:
            self.traffic.forward_calls += 1
            self.traffic.forward_bytes += n
        if be.device is None:
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            return
        if self._host is None or self._host.shape != tuple(buf.shape):
            self._host = np.empty(buf.shape, self._dtype)
        be.to_host(buf, out=self._host)  # waits for the GPU
        self.comm.Allreduce(MPI.IN_PLACE, self._host, op=MPI.SUM)
        buf.copy_from_host(self._host)

    def _add_bias(self, y, relu: bool) -> None:
        """y += b (each row), then max(y, 0) when relu: as Linear does it on this back end."""
        be, b = self._backend, self.bias
        bias = None if b is None else b._data
        if be.fused_epilogue and (bias is not None or relu):
            be.bias_relu(y, bias, relu)  # one compiled pass
        elif relu:
            raise ValueError(f"the {be.name!r} back end cannot fuse a ReLU into a Linear layer")
        elif bias is not None:
            be.bias_add(y, bias)


class ColumnParallelLinear(_Split):
    """Rows [lo, hi) of a Linear's W (out x in) and of its b: ``Y_r = X W_r^T + b_r``, columns
    [lo, hi) of the full layer's output.  No communication forward; backward sums dX over the ranks."""

    def __init__(self, weight, bias, lo: int, hi: int, out_features: int, comm):
        super().__init__(weight, bias, lo, hi, out_features, comm)
        self.in_features = int(self.weight.shape[1])
        self.out_features = int(out_features)  # the full layer's; this rank computes hi - lo of them

    def forward(self, x: np.ndarray, relu: bool = False) -> np.ndarray:
        # x (batch, in): the full input, the same on every rank
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects input of shape (batch, {self.in_features}), got {x.shape}")
        y = self._buf("y", (x.shape[0], self.hi - self.lo))  # (batch, hi - lo): this rank's columns
        be, b = self._backend, self.bias
        if be.fused_epilogue and isinstance(be, DeviceBackend) and self._prof is None:
            # the GPU: one GEMM launch writes y = X W_r^T + b_r (and max(y, 0)), as Linear does
            be.matmul_into(x, self.weight._data, y, trans_b=True, bias=None if b is None else b._data, relu=relu)
        else:
            self._matmul(x, self.weight._data, y, trans_b=True)  # y = X W_r^T   (batch, in) x (in, hi - lo)
            self._add_bias(y, relu)  # y += b_r
        self._x = x  # dW_r needs it
        return y

    def _backward(self, dy: np.ndarray, need_input_grad: bool):
        # dy (batch, hi - lo): dL/dY_r, this rank's columns of the output's gradient
        x, W = self._x, self.weight
        assert x is not None  # a forward pass came first
        self._matmul(dy, x, W._grad, trans_a=True, beta=W._grad_beta())  # dW_r (+)= dY_r^T X   (hi - lo, in)
        if self.bias is not None:
            self._backend.bias_grad(dy, self.bias._grad, self.bias._grad_beta())  # db_r (+)= column sums of dY_r
        if not need_input_grad:
            return None  # the model's first layer: nobody needs dL/d(data), and no allreduce either
        dx = self._buf("dx", x.shape)  # (batch, in)
        self._matmul(dy, W._data, dx)  # this rank's part: dY_r W_r   (batch, hi - lo) x (hi - lo, in)
        self._allreduce(dx, backward=True)  # f's backward: dX = sum over ranks of dY_r W_r
        return dx

    def _saved_output_shape(self):
        return None if self._x is None else (self._x.shape[0], self.hi - self.lo)

    def output_features(self, in_features: int) -> int:
        return self.hi - self.lo  # this rank's slice of the hidden layer

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rows {self.lo}:{self.hi}" + (
            "" if self.bias is not None else ", bias=False"
        )


class RowParallelLinear(_Split):
    """Columns [lo, hi) of a Linear's W (out x in), and its whole b: ``Y = sum_r X_r W_r^T + b``,
    the sum an allreduce forward (b added once, after it, on every rank); no communication backward."""

    def __init__(self, weight, bias, lo: int, hi: int, in_features: int, comm):
        super().__init__(weight, bias, lo, hi, in_features, comm)
        self.in_features = int(in_features)  # the full layer's; this rank takes hi - lo of them
        self.out_features = int(self.weight.shape[0])

    def forward(self, x: np.ndarray, relu: bool = False) -> np.ndarray:
        # x (batch, hi - lo): the column layer's slice of the hidden layer (after the activation)
        if x.ndim != 2 or x.shape[1] != self.hi - self.lo:
            raise ValueError(f"{self!r} expects input of shape (batch, {self.hi - self.lo}), got {x.shape}")
        y = self._buf("y", (x.shape[0], self.out_features))  # (batch, out)
        self._matmul(x, self.weight._data, y, trans_b=True)  # this rank's share: X_r W_r^T   (batch, out)
        self._allreduce(y, backward=False)  # g's forward: Y = sum over ranks of X_r W_r^T
        self._add_bias(y, relu)  # Y += b: the same b and the same sum on every rank
        self._x = x  # dW_r needs it
        return y

    def _backward(self, dy: np.ndarray, need_input_grad: bool):
        # dy (batch, out): the full gradient, the same on every rank (g's backward is the identity)
        x, W = self._x, self.weight
        assert x is not None  # a forward pass came first
        self._matmul(dy, x, W._grad, trans_a=True, beta=W._grad_beta())  # dW_r (+)= dY^T X_r   (out, hi - lo)
        if self.bias is not None:
            self._backend.bias_grad(dy, self.bias._grad, self.bias._grad_beta())  # db (+)= column sums of dY
        if not need_input_grad:
            return None
        dx = self._buf("dx", x.shape)  # (batch, hi - lo)
        self._matmul(dy, W._data, dx)  # dX_r = dY W_r: this rank's columns of dX, no communication
        return dx

    def _saved_output_shape(self):
        return None if self._x is None else (self._x.shape[0], self.out_features)

    def output_features(self, in_features: int) -> int:
        return self.out_features

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, columns {self.lo}:{self.hi}" + (
            "" if self.bias is not None else ", bias=False"
        )


class TensorParallel(Sequential):
    """A Sequential whose (Linear, activations and Dropouts, Linear) runs are (ColumnParallelLinear,
    the same layers, RowParallelLinear) holding this rank's slices; made by :func:`tensor_parallel`.

    Every rank feeds it the same full batch and gets the same full output, so the loss, fit's
    shuffling and the optimizer's step run alike everywhere (Sequential's ``fit`` works as it is).
    ``state_dict()`` gathers the unsplit model's state (the same names and shapes, on every rank);
    ``full_grads()`` the same for the gradients; ``load_state_dict`` takes the unsplit model's
    state and keeps this rank's slices.  ``traffic()`` sums every split layer's allreduces.
    ``comm``: the ranks that split it (:func:`tensor_parallel`'s).  It may itself be wrapped in
    ``DataParallel(tp, comm=...)`` over the ranks that hold the same slices (see :func:`grid`)."""

    def __init__(self, *layers: Module, comm=None):
        super().__init__(*layers)
        self.comm = _world() if comm is None else comm

    def broadcast_random_state(self, root: int = 0) -> None:
        """Give every rank of ``comm`` rank ``root``'s state of whygpu's random generator, so that
        Dropout (replicated or split) and fit's shuffling draw the same numbers on every rank."""
        if self.comm.Get_size() == 1:
            return
        gen = _random.get_rng().bit_generator
        gen.state = self.comm.bcast(gen.state, root=root)

    def forward(self, x: np.ndarray) -> np.ndarray:
        # Sequential's loop, with a split layer + ReLU fused as a Linear + ReLU is (the same bits for P = 1).
        layers, i = self.layers, 0
        fuse = self._backend.fused_epilogue
        while i < len(layers):
            pair = _fusable(layers, i) if fuse else None
            if pair is None:
                x = layers[i].forward(x)
                i += 1
            else:
                x = pair[0].forward(x, relu=True)
                pair[1]._x = x  # the ReLU's backward masks by x > 0: the same set as its input's
                i += 2
        self._forwarded = True
        return x

    def traffic(self) -> Traffic:
        """Every split layer's allreduces, summed (since it was made or :meth:`reset_traffic`)."""
        total = Traffic()
        for layer in self.layers:
            if isinstance(layer, _Split):
                total += layer.traffic
        return total

    def reset_traffic(self) -> None:
        for layer in self.layers:
            if isinstance(layer, _Split):
                layer.traffic = Traffic()

    def _gathered(self, what: str) -> OrderedDict:
        """Every parameter's values ("data") or gradient ("grad") as the unsplit model holds it."""
        out: OrderedDict = OrderedDict()
        for i, layer in enumerate(self.layers):
            for name, p in layer.named_parameters():
                a = _host(p.data if what == "data" else p.grad)
                if isinstance(layer, ColumnParallelLinear):  # rows [lo, hi) of W and of b
                    a = np.concatenate(layer.comm.allgather(a), axis=0)
                elif isinstance(layer, RowParallelLinear) and name == "weight":  # columns [lo, hi) of W
                    a = np.concatenate(layer.comm.allgather(a), axis=1)
                out[f"{i}.{name}"] = a
        return out

    def state_dict(self) -> OrderedDict:
        """The unsplit model's state dict (names "0.weight", ...; full shapes), on every rank: a
        collective, every rank must call it."""
        return self._gathered("data")

    def full_grads(self) -> OrderedDict:
        """Every parameter's gradient gathered to the unsplit model's shape, named as in
        :meth:`state_dict` (a collective)."""
        return self._gathered("grad")

    def load_state_dict(self, state, strict: bool = True):
        """Load the unsplit model's state (:meth:`state_dict`'s names and full shapes): each split
        layer keeps its slices; checked as :meth:`whygpu.nn.Module.load_state_dict` checks."""
        local = dict(state)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, _Split):
                continue
            lo, hi = layer.lo, layer.hi
            for name, _ in layer.named_parameters():
                key = f"{i}.{name}"
                v = np.asarray(local[key]) if key in local else None
                if v is None or v.ndim == 0:
                    continue  # missing or odd: the checks below say so
                if isinstance(layer, ColumnParallelLinear) and v.shape[0] == layer.full:
                    local[key] = np.ascontiguousarray(v[lo:hi])  # rows [lo, hi) of W and of b
                elif (
                    isinstance(layer, RowParallelLinear)
                    and name == "weight"
                    and v.ndim == 2
                    and v.shape[1] == layer.full
                ):
                    local[key] = np.ascontiguousarray(v[:, lo:hi])  # columns [lo, hi) of W
        return super().load_state_dict(local, strict)


def _fusable(layers: list[Module], i: int) -> tuple[Any, LeakyReLU] | None:
    """(layers[i], layers[i + 1]) when a ReLU (slope 0) follows a Linear or a split layer."""
    if i + 1 >= len(layers):
        return None
    lin, act = layers[i], layers[i + 1]
    if type(lin) not in (Linear, ColumnParallelLinear, RowParallelLinear):
        return None
    if (type(act) is ReLU or type(act) is LeakyReLU) and act.negative_slope == 0.0:
        return lin, act
    return None


def _host(a) -> np.ndarray:
    return np.array(a, copy=True) if isinstance(a, np.ndarray) else a.to_host()


def _pair_end(layers: list[Module], i: int) -> int | None:
    """The index of the Linear that closes a pair opened by the Linear at ``i``: after it one or more
    element-wise activations and Dropouts (in any order), then a Linear taking its outputs; else None."""
    a, j = layers[i], i + 1
    if type(a) is not Linear:
        return None
    while j < len(layers) and isinstance(layers[j], _BETWEEN):
        j += 1
    if j == i + 1 or j == len(layers):
        return None
    b = layers[j]
    return j if type(b) is Linear and b.in_features == a.out_features else None


def tensor_parallel(model: Sequential, comm=None) -> TensorParallel:
    """Split ``model`` (a Sequential built alike on every rank: seed first) across the ranks of
    ``comm`` (default: ``dist.comm()``).

    Each run of layers (Linear, element-wise activations and Dropouts in any order -- at least one
    --, Linear), found from the left, becomes (ColumnParallelLinear, the same layers in between,
    RowParallelLinear) with this rank's slices, copied from the full weights: rows
    ``share(hidden, P, rank)`` of the first W and b, the same columns of the second W (its b whole).
    A Dropout in between keeps those columns of the mask one process draws (it draws the whole
    width's and keeps its own: ``Dropout._cols``).  The other layers stay replicated: the returned
    model takes them over (use it, not ``model``, from then on).  Same back end and dtype as
    ``model``.  Activations: ReLU, LeakyReLU, Sigmoid, Tanh (not Softmax, a row-wise one).  Every
    rank is given rank 0's random state (:meth:`TensorParallel.broadcast_random_state`), so that
    Dropout and fit's shuffling draw the same numbers on every rank."""
    if not isinstance(model, Sequential) or isinstance(model, TensorParallel):
        raise TypeError(f"tensor_parallel takes a whygpu.nn.Sequential, got {type(model).__name__}")
    comm = _world() if comm is None else comm
    P, r = comm.Get_size(), comm.Get_rank()
    layers = list(model.layers)
    out: list[Module] = []
    i = 0
    while i < len(layers):
        j = _pair_end(layers, i)
        if j is None:
            out.append(layers[i])
            i += 1
            continue
        a, b = layers[i], layers[j]
        assert isinstance(a, Linear) and isinstance(b, Linear)  # _pair_end checked them
        hidden = a.out_features
        if hidden < P:
            raise ValueError(f"layer {i} has {hidden} outputs: too few to split across {P} ranks")
        lo, hi = share(hidden, P, r)
        wa, wb = _host(a.weight.data), _host(b.weight.data)
        ba = None if a.bias is None else _host(a.bias.data)[lo:hi]
        bb = None if b.bias is None else _host(b.bias.data)
        out.append(ColumnParallelLinear(wa[lo:hi], ba, lo, hi, hidden, comm))
        for m in layers[i + 1 : j]:
            if isinstance(m, Dropout):
                m._cols = (lo, hi, hidden)  # the mask of the whole width drawn, columns [lo, hi) kept
            out.append(m)
        out.append(RowParallelLinear(np.ascontiguousarray(wb[:, lo:hi]), bb, lo, hi, hidden, comm))
        i = j + 1
    tp = TensorParallel(*out, comm=comm)
    tp.to(model._backend.name, model._dtype)  # the new layers start on the host
    tp.train(model.training)
    tp.broadcast_random_state()
    return tp
