"""Where the time of a training step goes: matmul versus everything else,
per layer.

    with whygpu.nn.profile(model) as prof:
        for x, y in batches:
            logits = model(x); loss = loss_fn(logits, y)
            model.zero_grad(); model.backward(loss_fn.backward()); opt.step()
    print(prof)                 # a table
    prof.breakdown()            # the same figures as a dict
    prof.matmul_share           # fraction of the wall time spent in matmuls

or, for a fixed batch, :func:`step_breakdown`.  While a profile is active
each layer times its forward and backward passes and, inside them, its
matmuls; the loss and the optimizer time themselves.  Whatever the profile
did not see (your loop, slicing batches, Python between calls) is reported
as "outside", so the rows add up to the wall time.  With no profile active
the cost is one ``is None`` test per layer call.

On a GPU back end (``cuda``) two things change.  Copies between host and
device memory (the batch going in, the labels, the loss coming out) get a
row of their own, "host <-> device copies", and are left out of the row
they happened in; ``breakdown()`` gives their seconds, bytes and share.
And since GPU work is asynchronous, every GPU operation waits for the GPU
while a profile is active, so each row holds the time the GPU really took
(a profiled step is therefore a little slower than an unprofiled one).
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["profile", "Profile", "step_breakdown"]

_clock = time.perf_counter
_active: Profile | None = None  # the profile that losses and optimizers report to


class _Record:
    """Seconds spent by one row of the table."""

    __slots__ = ("name", "forward_s", "backward_s", "matmul_s", "matmul_calls", "flops")

    def __init__(self, name: str):
        self.name = name
        self.forward_s = self.backward_s = self.matmul_s = 0.0
        self.matmul_calls = 0
        self.flops = 0

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_s


class Profile:
    """Accumulated timings of a model's layers, its loss and its optimizer."""

    def __init__(self, model):
        self.model = model
        self.layers: list[_Record] = []
        self.loss = _Record("loss")
        self.optimizer = _Record("optimizer")
        self.steps = 0
        self.wall_s = 0.0
        self._t0: float | None = None
        # host <-> device copies (GPU back ends): seconds, bytes, how many
        self.transfer_s = 0.0
        self.transfer_bytes = 0
        self.transfer_calls = 0

    # -- context manager ---------------------------------------------------
    def __enter__(self) -> Profile:
        global _active
        if _active is not None:
            raise RuntimeError("a whygpu.nn profile is already active; profiles do not nest")
        self.layers = [_Record(f"{i}: {layer!r}") for i, layer in enumerate(_leaves(self.model))]
        for layer, rec in zip(_leaves(self.model), self.layers):
            layer._prof = rec
        _active = self
        backend = getattr(self.model, "_backend", None)
        if backend is not None and getattr(backend, "device", None) is not None:
            backend.synchronize()  # GPU work queued before the profile is not its time
        self._t0 = _clock()
        return self

    def __exit__(self, *exc) -> None:
        global _active
        if self._t0 is None:
            raise RuntimeError("Profile.__exit__ without __enter__: use it as `with whygpu.nn.profile(model):`")
        self.wall_s += _clock() - self._t0
        for layer in _leaves(self.model):
            layer._prof = None
        _active = None

    # -- results -----------------------------------------------------------
    def _add_transfer(self, seconds: float, nbytes: int) -> None:
        """Called by a GPU back end for each host <-> device copy made while active."""
        self.transfer_s += seconds
        self.transfer_bytes += nbytes
        self.transfer_calls += 1

    @property
    def transfer_share(self) -> float:
        """Fraction of the wall time spent copying between host and device memory."""
        return self.transfer_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def matmul_s(self) -> float:
        return sum(r.matmul_s for r in self.layers)

    @property
    def matmul_share(self) -> float:
        """Fraction of the wall time spent inside matrix multiplications."""
        return self.matmul_s / self.wall_s if self.wall_s > 0 else 0.0

    def breakdown(self) -> dict[str, Any]:
        """Per row (each layer, the loss, the optimizer, "outside"): matmul
        seconds, other seconds, total seconds and share of the wall time;
        plus totals.  Times are summed over all steps; divide by ``steps``
        for a per-step figure."""
        rows: list[dict[str, Any]] = []  # name: str; the rest are numbers
        for r in self.layers + [self.loss, self.optimizer]:
            rows.append(
                {
                    "name": r.name,
                    "matmul_s": r.matmul_s,
                    "other_s": r.total_s - r.matmul_s,
                    "total_s": r.total_s,
                    "forward_s": r.forward_s,
                    "backward_s": r.backward_s,
                    "matmul_calls": r.matmul_calls,
                    "gflop": r.flops / 1e9,
                }
            )
        if self.transfer_calls:
            rows.append(
                {
                    "name": "host <-> device copies",
                    "matmul_s": 0.0,
                    "other_s": self.transfer_s,
                    "total_s": self.transfer_s,
                    "forward_s": 0.0,
                    "backward_s": 0.0,
                    "matmul_calls": 0,
                    "gflop": 0.0,
                }
            )
        seen = sum(row["total_s"] for row in rows)
        rows.append(
            {
                "name": "outside (your loop, Python)",
                "matmul_s": 0.0,
                "other_s": max(self.wall_s - seen, 0.0),
                "total_s": max(self.wall_s - seen, 0.0),
                "forward_s": 0.0,
                "backward_s": 0.0,
                "matmul_calls": 0,
                "gflop": 0.0,
            }
        )
        for row in rows:
            row["share"] = row["total_s"] / self.wall_s if self.wall_s > 0 else 0.0
        matmul = self.matmul_s
        return {
            "backend": getattr(self.model, "backend", "?"),
            "steps": self.steps,
            "wall_s": self.wall_s,
            "step_ms": 1e3 * self.wall_s / self.steps if self.steps else float("nan"),
            "matmul_s": matmul,
            "other_s": self.wall_s - matmul,
            "matmul_share": self.matmul_share,
            "transfer_s": self.transfer_s,
            "transfer_share": self.transfer_share,
            "transfer_bytes": self.transfer_bytes,
            "transfer_calls": self.transfer_calls,
            "rows": rows,
        }

    def table(self) -> str:
        """The breakdown as a text table (milliseconds per step)."""
        b = self.breakdown()
        per = max(self.steps, 1)
        unit = "ms/step" if self.steps else "ms total"
        w = max([len(r["name"]) for r in b["rows"]] + [10])
        lines = [
            f"time breakdown on back end {b['backend']!r}: {self.steps} step(s), {b['step_ms']:.3f} ms/step"
            if self.steps
            else f"time breakdown on back end {b['backend']!r}: {1e3 * self.wall_s:.3f} ms",
            f"{'':{w}}  {'matmul':>10} {'other':>10} {'total':>10} {'share':>7}   ({unit})",
        ]
        for r in b["rows"]:
            lines.append(
                f"{r['name']:{w}}  {1e3 * r['matmul_s'] / per:10.3f} {1e3 * r['other_s'] / per:10.3f} "
                f"{1e3 * r['total_s'] / per:10.3f} {100 * r['share']:6.1f}%"
            )
        lines.append(
            f"{'total':{w}}  {1e3 * b['matmul_s'] / per:10.3f} {1e3 * b['other_s'] / per:10.3f} "
            f"{1e3 * self.wall_s / per:10.3f} {100.0:6.1f}%"
        )
        lines.append(f"matrix multiplication: {100 * b['matmul_share']:.1f}% of the time")
        if self.transfer_calls:
            lines.append(
                f"host <-> device copies: {100 * self.transfer_share:.1f}% of the time "
                f"({self.transfer_calls / per:.1f} copies, {self.transfer_bytes / per / 1e6:.3f} MB per "
                f"{'step' if self.steps else 'run'})"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"<Profile {self.steps} steps, matmul {100 * self.matmul_share:.1f}%>"


def _leaves(model) -> list:
    layers = getattr(model, "layers", None)
    return list(layers) if layers is not None else [model]


def profile(model) -> Profile:
    """A context manager that times `model`'s layers, and any loss and
    optimizer used inside it.  See the module docstring."""
    return Profile(model)


def step_breakdown(model, x, y, loss_fn, optimizer, steps: int = 10, warmup: int = 2) -> Profile:
    """Run ``steps`` explicit training steps on one batch ``(x, y)`` under a
    profile (after ``warmup`` unprofiled ones) and return the Profile.

    Note that this trains the model: its parameters change.
    """

    def step():
        logits = model(x)
        loss_fn(logits, y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        optimizer.step()

    for _ in range(warmup):
        step()
    with profile(model) as prof:
        for _ in range(steps):
            step()
    return prof
