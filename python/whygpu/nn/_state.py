"""State dicts: a model's parameters and an optimizer's state as plain NumPy arrays, named as
PyTorch names them, so that they can be saved (``whygpu.save``), loaded back, resharded, or
loaded into the same ``torch.nn.Sequential``.

Loading is in two phases: every name, shape and dtype is checked and every value copied into
a temporary first; only when all of it fits is anything assigned, so a file of another model
leaves the model in memory unchanged.

    model.state_dict()      {"0.weight": (out, in) array, "0.bias": (out,), "2.weight": ...}
    opt.state_dict()        {"state": {0: {"exp_avg": ..., "exp_avg_sq": ..., "step": 3}, ...},
                             "param_groups": [{"lr": ..., "betas": [...], ..., "params": [0, 1, ...]}]}

The optimizer's state is keyed by the parameter's index in ``model.parameters()`` (PyTorch's
convention), not by any internal layout: a sharded optimizer consolidates into the same dict.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .._serialize import CheckpointError, _is_tensor

__all__ = [
    "module_state_dict",
    "load_module_state",
    "optimizer_state_dict",
    "check_optimizer_state",
    "assign_optimizer_state",
]

# what each optimizer keeps per parameter, in its _states() order, under PyTorch's names
STATE_NAMES = {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq")}
# the hyperparameters a state dict's param group carries (PyTorch's names)
HYPER_NAMES = {"sgd": ("lr", "momentum", "weight_decay", "nesterov"), "adam": ("lr", "betas", "eps", "weight_decay")}


def _host(a) -> np.ndarray:
    """A NumPy copy of a parameter or state array (a DeviceArray comes down from the GPU)."""
    return np.array(a, copy=True) if isinstance(a, np.ndarray) else a.to_host()


# -- a model --------------------------------------------------------------------------------
def module_state_dict(module) -> OrderedDict:
    """Every parameter's values (a copy, on the host), in ``named_parameters()`` order."""
    return OrderedDict((name, _host(p.data)) for name, p in module.named_parameters())


def check_module_state(module, state, strict: bool = True) -> list[tuple]:
    """The (parameter, new values) pairs loading ``state`` would assign, every value already
    a checked copy; CheckpointError saying exactly what differs when it does not fit."""
    if not isinstance(state, Mapping):
        raise TypeError(
            f"load_state_dict takes a dict of arrays (from state_dict() or whygpu.load), got {type(state).__name__}"
        )
    named = OrderedDict(module.named_parameters())
    missing = [k for k in named if k not in state]
    unexpected = [k for k in state if k not in named]
    problems = []
    if strict and missing:
        problems.append(f"missing: {', '.join(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected: {', '.join(map(str, unexpected))}")
    out = []
    for name, p in named.items():
        if name not in state:
            continue
        v = state[name]
        if _is_tensor(v):  # a CPU tensor: its array (no import of torch here)
            v = v.detach().cpu().numpy()
        v = np.asarray(v)
        if v.shape != p.shape:
            problems.append(f"{name}: shape {v.shape} in the state, {p.shape} in the model")
        elif v.dtype != p.dtype:
            problems.append(
                f"{name}: dtype {v.dtype} in the state, {p.dtype} in the model "
                f"(convert the model with model.to(dtype=np.{v.dtype}) or the state with .astype)"
            )
        else:
            out.append((p, np.array(v, copy=True)))
    if problems:
        raise CheckpointError(f"the state does not fit this {type(module).__name__}: " + "; ".join(problems))
    return out


def load_module_state(module, state, strict: bool = True) -> tuple[list[str], list[str]]:
    """Module.load_state_dict: check everything, then assign.  Returns (missing, unexpected)
    names, as PyTorch does (both empty when strict)."""
    pairs = check_module_state(module, state, strict)
    assign_module_state(pairs)
    named = dict(module.named_parameters())
    return [k for k in named if k not in state], [k for k in state if k not in named]


def assign_module_state(pairs: list[tuple]) -> None:
    for p, v in pairs:
        p.data = v  # in place on the host (a sharded model's flat buffers too); an upload on a GPU


# -- an optimizer ------------------------------------------------------------------------------
def optimizer_state_dict(opt) -> dict:
    """opt.state_dict() for SGD or Adam on a list of parameters."""
    kind = opt._kind
    names = STATE_NAMES[kind]
    state: dict[int, dict] = {}
    for i in range(len(opt.params)):
        entry: dict = {}
        for key, store in zip(names, opt._states()):
            if store[i] is not None:
                entry[key] = _host(store[i])
        if kind == "adam" and entry:
            entry["step"] = int(opt.t)
        if entry:
            state[i] = entry
    group = {h: _hyper_value(opt, h) for h in HYPER_NAMES[kind]}
    group["params"] = list(range(len(opt.params)))
    return {"kind": kind, "state": state, "param_groups": [group]}


def _hyper_value(opt, name):
    v = getattr(opt, name)
    return list(v) if isinstance(v, tuple) else v


def check_optimizer_state(opt, state, shapes: list[tuple], dtypes: list) -> tuple[dict, dict, int]:
    """(per-parameter state {index: {name: array}}, hyperparameters, Adam's step) from ``state``,
    checked against an optimizer of kind ``opt._kind`` over parameters of these shapes and dtypes;
    CheckpointError saying what differs."""
    if not isinstance(state, Mapping) or "state" not in state or "param_groups" not in state:
        raise CheckpointError("an optimizer state dict has 'state' and 'param_groups' (from opt.state_dict())")
    kind = opt._kind
    if state.get("kind", kind) != kind:
        raise CheckpointError(f"the state is a {state.get('kind')!r} optimizer's; this optimizer is {kind!r}")
    groups = state["param_groups"]
    if len(groups) != 1:
        raise CheckpointError(f"whygpu's optimizers have one parameter group; the state has {len(groups)}")
    group = groups[0]
    params = list(group.get("params", []))
    if len(params) != len(shapes):
        raise CheckpointError(
            f"the state is of an optimizer over {len(params)} parameters; this one has {len(shapes)} (another model?)"
        )
    hyper = {}
    for h in HYPER_NAMES[kind]:
        if h not in group:
            raise CheckpointError(f"the state's parameter group has no {h!r}")
        hyper[h] = _checked_hyper(h, group[h])
    per: dict[int, dict] = {}
    step = 0
    raw = state["state"]
    names = STATE_NAMES[kind]
    for key, entry in raw.items():
        i = params.index(int(key)) if int(key) in params else -1
        if i < 0:
            raise CheckpointError(f"the state has an entry for parameter {key}, which its group does not list")
        got = {}
        for name in names:
            if name not in entry:
                continue
            a = np.asarray(entry[name])
            if a.shape != shapes[i]:
                raise CheckpointError(
                    f"parameter {i}'s {name} is {a.shape} in the state but the parameter is {shapes[i]} "
                    "(another model?)"
                )
            if a.dtype.kind != "f":
                raise CheckpointError(f"parameter {i}'s {name} has dtype {a.dtype}, not floating point")
            got[name] = np.array(a, dtype=dtypes[i], copy=True)
        if kind == "adam" and "step" in entry:
            step = int(np.asarray(entry["step"]).item())
        per[i] = got
    return per, hyper, step


def _checked_hyper(name: str, v):
    """A hyperparameter read from a state dict, checked as the optimizers' constructors check it."""
    if name == "nesterov":
        if not isinstance(v, (bool, np.bool_)):
            raise CheckpointError(f"the state's nesterov must be True or False, got {v!r}")
        return bool(v)
    if name == "betas":
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise CheckpointError(f"the state's betas must be a pair, got {v!r}")
        return tuple(_real(b, "beta", high=1.0) for b in v)
    return _real(v, name)


def _real(v, name: str, high: float | None = None) -> float:
    """v as a float >= 0 (and < high), else CheckpointError."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not v >= 0.0:
        raise CheckpointError(f"the state's {name} must be a number >= 0, got {v!r}")
    if high is not None and not v < high:
        raise CheckpointError(f"the state's {name} must be < {high}, got {v!r}")
    return float(v)


def assign_optimizer_state(opt, per: dict, hyper: dict, step: int) -> None:
    """Put checked state (from check_optimizer_state) into ``opt``: the arrays in the memory of
    each parameter's back end, the hyperparameters, Adam's step count."""
    names = STATE_NAMES[opt._kind]
    stores = opt._states()
    for i, p in enumerate(opt.params):
        entry = per.get(i, {})
        for name, store in zip(names, stores):
            store[i] = p._backend.asarray(entry[name]) if name in entry else None
        opt._placed[i] = p._data
    for h, v in hyper.items():
        setattr(opt, h, v)
    if opt._kind == "adam":
        opt.t = step
    opt._steps += 1
