"""What every rank must agree on before a collective, checked with one small allgather.

A rank given other arguments than the rest would otherwise issue other
collectives (another number of batches, another bucket layout) and wait
forever for a partner that never comes, or sum mismatched buffers.  Each
check here gathers a short signature of named fields from every rank (one
``comm.allgather`` of a few tuples) and compares every rank's with rank 0's;
on the first difference *every* rank raises the same ValueError, naming the
field and the values on rank 0 and on the first rank that differs.  With one
rank nothing is sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["agree", "disagreement", "agree_fit", "fit_signature", "check_same_model", "fail_together"]


def disagreement(every: list[list[tuple[str, Any]]]) -> tuple[str, Any, int, Any] | None:
    """The first (field, rank 0's value, rank, that rank's value) where a rank's signature differs
    from rank 0's (the ranks in order, the fields in order), or None when all agree."""
    ref = every[0]
    for r, sig in enumerate(every[1:], start=1):
        for (name, a), (_, b) in zip(ref, sig):
            if a != b:
                return name, a, r, b
    return None


def agree(comm, signature: list[tuple[str, Any]], what: str, hint: str = "") -> None:
    """Every rank's ``signature`` (a list of (field, value) pairs, the same fields in the same order
    on every rank; values that pickle and compare with ==) must equal rank 0's: else the same
    ValueError on every rank.  One allgather; nothing with one rank."""
    if comm.Get_size() == 1:
        return
    found = disagreement(comm.allgather(signature))
    if found is not None:
        name, a, r, b = found
        raise ValueError(f"{what}: the ranks disagree on {name}: {a!r} on rank 0 but {b!r} on rank {r}{hint}")


def fail_together(
    comm,
    error: BaseException | None,
    what: str,
    failed: str = "refused its arguments",
    then: str = "every rank stops here",
) -> None:
    """After a step some ranks may have refused (their own checks raised ``error``): every rank
    learns it (one allgather), the refusing ones re-raise their own error, the others a RuntimeError
    naming the first that refused -- so no rank goes on into a collective the refusing ones skip."""
    if comm.Get_size() == 1:
        if error is not None:
            raise error
        return
    every = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    bad = [(r, e) for r, e in enumerate(every) if e is not None]
    if bad:
        r, e = bad[0]
        raise RuntimeError(f"{what}: rank {r} {failed} ({e}); {then}")


def _array_sig(a) -> tuple:
    a = np.asarray(a) if not hasattr(a, "shape") else a
    return tuple(int(n) for n in a.shape), str(a.dtype)


def fit_signature(X, y, val, epochs: int, batch_size: int, shuffle) -> list[tuple[str, Any]]:
    """fit's arguments that decide which collectives each rank issues (and how many)."""
    (xs, xd), (ys, yd) = _array_sig(X), _array_sig(y)
    if val is None:
        v: Any = None
    else:
        (vxs, vxd), (vys, vyd) = _array_sig(val[0]), _array_sig(val[1])
        v = f"X_val {vxs} {vxd}, y_val {vys} {vyd}"
    return [
        ("the number of samples (len(X))", xs[0] if xs else 0),
        ("X's shape", xs),
        ("X's dtype", xd),
        ("y's shape", ys),
        ("y's dtype", yd),
        ("batch_size", int(batch_size)),
        ("epochs", int(epochs)),
        ("shuffle", bool(shuffle)),
        ("validation_data", v),
    ]


def agree_fit(dp, X, y, val, epochs: int, batch_size: int, shuffle: bool) -> None:
    """DataParallel.fit's start: every rank was given the same data set length, shapes and dtypes,
    batch size, epochs, shuffle and validation setting; else the same ValueError on every rank."""
    agree(
        dp.comm,
        fit_signature(X, y, val, epochs, batch_size, shuffle),
        "DataParallel.fit",
        "; every rank must call fit with the same arguments and a data set of the same size "
        "(each rank holds all of X and y and trains on its share of every batch)",
    )


def check_same_model(dp) -> None:
    """DataParallel's wrapping: every rank holds parameters of the same shapes and dtypes, in the same
    order, and wrapped them with the same settings (shard, bucket sizes, prefetch, back end and
    dtype): otherwise the broadcast and every collective would mismatch (a hang, a wrong sum) or the
    ranks would drift apart.  One allgather of a small signature; every rank raises the same ValueError."""
    if dp.size == 1:
        return
    model = dp.module
    mine = [(name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters()]
    settings = [
        ("shard", dp.shard),
        ("bucket_mb", dp.bucket_mb),
        ("first_bucket_mb", dp.first_bucket_mb),
        ("prefetch", dp.prefetch),
        ("the back end", model.backend),
        ("the dtype", str(model.dtype)),
    ]
    every = dp.comm.allgather((mine, settings))
    ref = every[0][0]
    for r, (sig, _) in enumerate(every[1:], start=1):
        for k, (a, b) in enumerate(zip(ref, sig)):
            if a[1:] != b[1:]:
                raise ValueError(
                    f"DataParallel: the ranks hold different models: parameter {k} ({a[0]}) is "
                    f"{a[1]} {a[2]} on rank 0 but parameter {k} ({b[0]}) is {b[1]} {b[2]} on rank {r}; "
                    f"every rank must build the same model"
                )
        if len(sig) != len(ref):
            first = ref[len(sig)][0] if len(ref) > len(sig) else sig[len(ref)][0]
            raise ValueError(
                f"DataParallel: the ranks hold different models: rank 0 has {len(ref)} parameters, "
                f"rank {r} has {len(sig)} (the first that only one of them has: {first}); "
                f"every rank must build the same model"
            )
    found = disagreement([s for _, s in every])
    if found is not None:
        name, a, r, b = found
        raise ValueError(
            f"DataParallel: the ranks disagree on {name}: {a!r} on rank 0 but {b!r} on rank {r}; every "
            f"rank must wrap the same model with the same arguments (on the same kind of back end)"
        )
