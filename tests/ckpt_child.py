"""The child process tests/test_checkpoint.py kills (SIGKILL) and resumes.

python ckpt_child.py save PATH                  saves v1, then stops half-way through saving v2
python ckpt_child.py fit PATH BACKEND KILL_AT   fit(epochs=3, checkpoint=PATH, checkpoint_every=2),
                                                killing itself when step KILL_AT + 1 begins
python ckpt_child.py resume PATH BACKEND        fit(epochs=3, resume=PATH); the final weights and
                                                loss into PATH.final.npz
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time

import numpy as np

import whygpu
from whygpu import nn, optim


def make(seed=0, backend="numpy", dropout=True, hidden=24, dtype=np.float32):
    whygpu.manual_seed(seed)
    layers = [nn.Linear(10, hidden, dtype=dtype), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.3))
    layers += [nn.Linear(hidden, 4, dtype=dtype)]
    return nn.Sequential(*layers).to(backend)


def data(n=103):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 10)).astype(np.float32), rng.integers(0, 4, n)


def steps(model, opt, X, y, k: int) -> None:
    """k explicit training steps on (X, y), cross-entropy."""
    lf = nn.CrossEntropyLoss()
    for _ in range(k):
        lf(model(X), y)
        model.zero_grad()
        model.backward(lf.backward())
        opt.step()


def fit(model, opt, **kw):
    X, y = data()
    return model.fit(X, y, batch_size=16, optimizer=opt, loss=nn.CrossEntropyLoss(), verbose=0, **kw)


def main(argv: list[str]) -> None:
    mode, path = argv[0], argv[1]
    if mode == "save":
        whygpu.save({"version": 1, "w": np.full(1000, 1.0)}, path)
        real = np.savez

        def half_then_stop(f, **arrays):  # the new file half written, then wait to be killed
            buf = io.BytesIO()
            real(buf, **arrays)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            print("writing", flush=True)
            time.sleep(120)

        whygpu._serialize.np.savez = half_then_stop  # type: ignore[attr-defined]
        whygpu.save({"version": 2, "w": np.full(100_000, 2.0)}, path)
        return
    backend = argv[2]
    if mode == "fit":
        kill_at = int(argv[3])
        model = make(backend=backend)
        opt = optim.Adam(model.parameters(), lr=1e-2)
        step, count = opt.step, [0]

        def counted():
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            count[0] += 1
            step()

        opt.step = counted  # type: ignore[method-assign]
        fit(model, opt, epochs=3, checkpoint=path, checkpoint_every=2)
        return
    model = make(seed=11, backend=backend)  # other weights: the checkpoint's must replace them
    history = fit(model, optim.Adam(model.parameters(), lr=0.5), epochs=3, resume=path, checkpoint=path)
    whygpu.save({"model": model.state_dict(), "loss": history["loss"][-1]}, path + ".final.npz")


if __name__ == "__main__":
    main(sys.argv[1:])
