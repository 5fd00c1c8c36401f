"""Small data sets for the lessons, generated here or bundled with a
package, never downloaded.  Each function returns ``(X, y)``: X float32 of
shape (n, features); y int64 class labels for classification, float32 of
shape (n, 1) for regression.

* :func:`xor` -- the four points no straight line separates (why we need a hidden layer);
* :func:`line` -- y = 2x: one Linear(1, 1) learns the slope;
* :func:`sine` -- a noisy sine wave: a hidden layer approximates any smooth curve;
* :func:`spirals` -- two interleaved spirals: a non-linear decision boundary;
* :func:`load_digits` -- 1,797 handwritten 8x8 digits, bundled with scikit-learn
  (``pip install scikit-learn``).

:func:`train_test_split` splits with stratification without needing scikit-learn;
:func:`standardize` rescales features with the training set's statistics.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["xor", "line", "sine", "spirals", "load_digits", "train_test_split", "standardize"]


def _n(n, name="n") -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {n!r}")
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return int(n)


def _noise(noise) -> float:
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not float(noise) >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    return float(noise)


def xor() -> tuple[np.ndarray, np.ndarray]:
    """The XOR truth table: X (4, 2) in {0, 1}, y = x0 XOR x1 as class labels."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0], dtype=np.int64)
    return X, y


def line(n: int = 100, slope: float = 2.0, noise: float = 0.0, seed: int | None = 0):
    """Points on y = slope * x (x uniform in [-1, 1]), plus Gaussian noise of std ``noise``."""
    n = _n(n)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (n, 1))
    y = float(slope) * x + _noise(noise) * rng.standard_normal((n, 1))
    return x.astype(np.float32), y.astype(np.float32)


def sine(n: int = 256, noise: float = 0.1, seed: int | None = 0):
    """y = sin(x) + noise for x uniform in [-pi, pi]: a curve for a network to approximate."""
    n = _n(n)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.pi, np.pi, (n, 1))
    y = np.sin(x) + _noise(noise) * rng.standard_normal((n, 1))
    return x.astype(np.float32), y.astype(np.float32)


def spirals(n_per_class: int = 100, noise: float = 0.1, turns: float = 1.5, seed: int | None = 0):
    """Two interleaved spirals in the plane (classes 0 and 1), coordinates in about [-1, 1]."""
    n = _n(n_per_class, "n_per_class")
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.0, 1.0, n)) * float(turns) * 2 * np.pi  # sqrt: even density along the arm
    r = t / (float(turns) * 2 * np.pi)
    arm = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    X = np.concatenate([arm, -arm]) + _noise(noise) * rng.standard_normal((2 * n, 2)) * 0.1
    y = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
    perm = rng.permutation(2 * n)
    return X[perm].astype(np.float32), y[perm]


def load_digits(scale: bool = True):
    """scikit-learn's bundled handwritten digits: X (1797, 64) float32 (8x8
    images flattened; divided by 16 into [0, 1] when ``scale``), y int64 in 0..9.

    Needs scikit-learn (the data ships inside it; nothing is downloaded):
    ``pip install scikit-learn``.
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as exc:
        raise ImportError(
            "whygpu.datasets.load_digits needs scikit-learn, which bundles the digits data: pip install scikit-learn"
        ) from exc
    d = _load()
    X = d.data.astype(np.float32)
    if scale:
        X /= 16.0
    return X, d.target.astype(np.int64)


def train_test_split(X, y, test_size: float = 0.2, stratify: bool = True, seed: int | None = 0):
    """Split (X, y) into ``X_train, X_test, y_train, y_test`` at random.

    With ``stratify`` every class gets the same share of test samples (rounded
    per class; y must hold class labels), as scikit-learn's stratified split
    does.  ``test_size`` is a fraction in (0, 1) or a number of samples.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim == 0 or y.ndim == 0 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y must have the same number of samples, got shapes {X.shape} and {y.shape}")
    n = X.shape[0]
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
        raise TypeError(f"test_size must be a fraction or a count, got {test_size!r}")
    if isinstance(test_size, numbers.Integral):
        if not 0 < test_size < n:
            raise ValueError(f"test_size must be between 1 and {n - 1} samples, got {test_size}")
        frac = test_size / n
    else:
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size as a fraction must lie in (0, 1), got {test_size}")
        frac = float(test_size)
    rng = np.random.default_rng(seed)
    if stratify:
        if y.ndim != 1 or y.dtype.kind not in "iub":
            raise ValueError("stratify=True needs y to be 1-D class labels (integers)")
        test_parts = []
        for cls in np.unique(y):
            members = np.flatnonzero(y == cls)
            k = int(round(frac * len(members)))
            test_parts.append(rng.permutation(members)[:k])
        test = np.concatenate(test_parts)
    else:
        test = rng.permutation(n)[: max(1, int(round(frac * n)))]
    mask = np.zeros(n, dtype=bool)
    mask[test] = True
    train_idx = rng.permutation(np.flatnonzero(~mask))
    test_idx = rng.permutation(np.flatnonzero(mask))
    return X[train_idx], X[test_idx], y[train_idx], y[test_idx]


def standardize(X_train, *others, eps: float = 1e-3):
    """Shift and scale every feature to mean 0 and standard deviation 1
    using the statistics of ``X_train`` only (the test set must not leak into
    training), and apply the same transform to ``others``.  Returns the
    transformed arrays as float32, in order.  ``eps`` keeps constant
    features (a blank pixel) from dividing by zero.
    """
    X_train = np.asarray(X_train, dtype=np.float32)
    if X_train.ndim != 2 or X_train.shape[0] == 0:
        raise ValueError(f"X_train must be a non-empty 2-D array, got shape {X_train.shape}")
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0) + np.float32(eps)
    out = [(X_train - mean) / std]
    for X in others:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != X_train.shape[1]:
            raise ValueError(f"every array must have X_train's {X_train.shape[1]} features, got shape {X.shape}")
        out.append((X - mean) / std)
    return tuple(out) if others else out[0]
