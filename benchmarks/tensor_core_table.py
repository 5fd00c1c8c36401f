"""Issue 12's tables: the tensor-core rungs against cuBLAS at the same precision,
their error against float64, and what bf16 buys a training step.  Needs a
usable GPU (PyTorch for the cuBLAS columns and the float64 reference on the
GPU; without it those columns say n/a and the reference is NumPy's).

    PYTHONPATH=python python3 benchmarks/tensor_core_table.py [--sizes 4096 8192] [--rounds 10]

1. GFLOP/s of C = A B^T (A and B stored (n, n) row-major, the K-major layout
   the tensor cores read without a copy) on rungs 14 (float32), 15 (TF32 and
   bf16) and 16 (bf16), next to cuBLAS in float32, TF32 and bf16 (PyTorch,
   bf16 tensors for bf16) -- measured in alternation, median of rounds.
   whygpu's operands are float32 arrays, so its bf16 rows include rounding
   them to bf16 (two O(n^2) cast kernels per product, as an autocast does);
   cuBLAS bf16 is handed bf16 tensors.
2. Error of each against the float64 product of the same float32 data, at
   the first size: max |C - C64| / max |C64| (and norm-wise).
3. Training: ms per step of the 784-512-256-10 MLP (resident batch, CUDA
   graph) with every matmul in float32, TF32 or bf16, and the speed-up over
   float32; and digits accuracy after 20 epochs in bf16.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import whygpu  # noqa: E402
import whygpu.cuda as wc  # noqa: E402
from _train_common import whygpu_step  # noqa: E402
from whygpu import datasets, nn, optim  # noqa: E402

WHYGPU = [("cuda_warptile", None), ("cuda_mma", "tf32"), ("cuda_mma", "bf16"), ("cuda_wgmma", "bf16")]


def timed(run, rounds):
    run()  # warm-up (first launch, allocations)
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def gemm_table(sizes, rounds):
    try:
        import torch

        torch_ok = torch.cuda.is_available()
    except ImportError:
        torch_ok = False
    rows, errors = {}, {}
    usable = []
    for kernel, prec in WHYGPU:
        info = whygpu.kernel_info(kernel)
        if info.endswith("]"):  # "... [unavailable: why]"
            print(f"{kernel}: {info[info.rindex('[') + 1 : -1]}")
        else:
            usable.append((kernel, prec))
    for n in sizes:
        rng = np.random.default_rng(n)
        a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
        b = rng.uniform(-1, 1, (n, n)).astype(np.float32)
        da, db, dc = wc.to_device(a), wc.to_device(b), wc.empty((n, n))
        runs = {}
        for kernel, prec in usable:
            label = f"{kernel} ({prec or 'float32'})"
            runs[label] = (
                lambda k=kernel, p=prec, da=da, db=db, dc=dc: (
                    wc.gemm(da, db, dc, trans_b=True, kernel=k, precision=p),
                    wc.synchronize(),
                ),
                (kernel, prec),
            )
        if torch_ok:
            ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
            ta16, tb16 = ta.bfloat16(), tb.bfloat16()

            def tmm(x, y, tf32):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                out = x @ y.T
                torch.cuda.synchronize()
                return out

            runs["cuBLAS float32"] = (functools.partial(tmm, ta, tb, False), None)
            runs["cuBLAS tf32"] = (functools.partial(tmm, ta, tb, True), None)
            runs["cuBLAS bf16"] = (functools.partial(tmm, ta16, tb16, False), None)
        secs = {label: [] for label in runs}
        for _ in range(3):  # alternate, so a slow moment of the GPU hits every column alike
            for label, (run, _) in runs.items():
                secs[label].append(timed(run, max(1, rounds // 3)))
        for label in runs:
            rows.setdefault(label, {})[n] = 2.0 * n**3 / float(np.median(secs[label])) / 1e9
        if n == sizes[0]:  # errors against float64 at the first size
            if torch_ok:
                ref = (ta.double() @ tb.double().T).cpu().numpy()
            else:
                ref = a.astype(np.float64) @ b.astype(np.float64).T
            for label, (run, meta) in runs.items():
                if meta is None:
                    out = run()
                    got = out.float().cpu().numpy()
                else:
                    run()
                    got = dc.to_host()
                d = got.astype(np.float64) - ref
                errors[label] = (np.abs(d).max() / np.abs(ref).max(), np.linalg.norm(d) / np.linalg.norm(ref))
        for d in (da, db, dc):
            d.free()
    print(f"\nGFLOP/s, C = A B^T, float32 arrays resident on {wc.device_info()['name']}")
    print(f"{'':28}" + "".join(f"{n:>12}" for n in sizes))
    for label, by_n in rows.items():
        print(f"{label:28}" + "".join(f"{by_n.get(n, float('nan')):12.0f}" for n in sizes))
    for mine, theirs in (
        ("cuda_warptile (float32)", "cuBLAS float32"),
        ("cuda_mma (tf32)", "cuBLAS tf32"),
        ("cuda_mma (bf16)", "cuBLAS bf16"),
        ("cuda_wgmma (bf16)", "cuBLAS bf16"),
    ):
        if mine in rows and theirs in rows:
            print(f"{mine} / {theirs}: " + ", ".join(f"n={n}: {rows[mine][n] / rows[theirs][n]:.0%}" for n in sizes))
    print(f"\nerror against float64 at n = {sizes[0]}: max |C - C64| / max |C64|, ||C - C64|| / ||C64||")
    for label, (emax, enorm) in errors.items():
        print(f"{label:28}{emax:12.2e}{enorm:12.2e}")


def training_table(batches, rounds):
    print("\nms per training step, 784-512-256-10 MLP, resident batch, CUDA graph")
    backends = ["cuda", "cuda_mma", "cuda_mma_bf16"] + (["cuda_wgmma"] if "cuda_wgmma" in nn.backends() else [])
    print(f"{'batch':>6}" + "".join(f"{b:>16}" for b in backends) + "   speed-up over float32 (cuda)")
    for batch in batches:
        ms = {}
        for be in backends:
            step, _ = whygpu_step(be, batch, resident=True, graph=True)
            ms[be] = 1e3 * timed(step, rounds)
        print(
            f"{batch:6}"
            + "".join(f"{ms[b]:16.3f}" for b in backends)
            + "   "
            + ", ".join(f"{b}: {ms['cuda'] / ms[b]:.2f}x" for b in backends[1:])
        )


def digits_accuracy():
    X, y = datasets.load_digits()
    X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, test_size=0.2, stratify=True, seed=0)
    X_train, X_test = datasets.standardize(X_train, X_test)
    for prec in ("float32", "bf16"):
        whygpu.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128, init="he"), nn.ReLU(), nn.Linear(128, 10, init="he"))
        model.to("cuda", precision=prec)
        model.fit(
            X_train,
            y_train,
            epochs=20,
            batch_size=64,
            optimizer=optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            loss=nn.CrossEntropyLoss(),
            verbose=0,
        )
        print(
            f"digits, 20 epochs, {model.backend} ({prec}): test accuracy "
            f"{model.evaluate(X_test, y_test)['accuracy']:.4f}"
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--batches", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args(argv)
    if not wc.is_available():
        raise SystemExit(f"no usable GPU: {wc.unavailable_reason()}")
    gemm_table(args.sizes, args.rounds)
    if not args.skip_training:
        training_table(args.batches, args.rounds)
        digits_accuracy()


if __name__ == "__main__":
    main()
