"""Rung 1 -- python: the definition of matrix multiplication, in pure Python.

    C[i][j] = alpha * sum_p A[i][p] * B[p][j] + beta * C[i][j]

Three nested loops over Python lists.  Every ``+=`` and ``*`` is a trip
through the interpreter: fetch two boxed floats, look up the operation,
allocate a new float object.  That costs tens of nanoseconds per
multiply-add, where one CPU core can do 30+ of them per nanosecond -- the
gap every later rung closes a piece of.  Only sensible for small sizes
(n = 128 already takes about a second).

Unlike the compiled rungs this one cannot release the GIL: it *is* Python.
The arithmetic is done in Python floats (float64) and rounded on store.
"""

from __future__ import annotations

import numpy as np


def gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray, alpha: float, beta: float) -> None:
    """c = alpha * a @ b + beta * c, in place; a (m,k), b (k,n), c (m,n)."""
    m, k = a.shape
    n = b.shape[1]
    A = a.tolist()  # A[i] is row i: a list of k floats
    B = b.tolist()  # B[p] is row p: a list of n floats
    C = c.tolist() if beta != 0.0 else None
    for i in range(m):
        Ai = A[i]
        for j in range(n):
            acc = 0.0
            for p in range(k):
                acc += Ai[p] * B[p][j]  # B walked down a column: the naive order
            c[i, j] = alpha * acc if C is None else alpha * acc + beta * C[i][j]
