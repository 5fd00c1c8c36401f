"""Train a 64-128-10 network on scikit-learn's bundled handwritten digits,
on every back end of the kernel ladder that is fast enough, and show where
the time of a training step goes.

    pip install ".[digits]"           # in whygpu's folder: scikit-learn ships the digits data
    python examples/train_digits.py
"""
import time

import whygpu
from whygpu import datasets, nn, optim

# 1797 images of 8x8 pixels; a stratified 80/20 split; features rescaled
# with the training set's mean and standard deviation.
X, y = datasets.load_digits()
X_train, X_test, y_train, y_test = datasets.train_test_split(X, y, test_size=0.2, stratify=True, seed=0)
X_train, X_test = datasets.standardize(X_train, X_test)

for backend in ["numpy", "blocked", "packed", "openmp", "cuda"]:  # cuda: only where a GPU is usable
    if backend not in nn.backends():
        continue
    whygpu.manual_seed(0)  # the same initial weights on every back end
    model = nn.Sequential(
        nn.Linear(64, 128, init="he"),
        nn.ReLU(),
        nn.Linear(128, 10, init="he"),
    ).to(backend)
    if backend == "numpy":
        model.summary()
    t0 = time.perf_counter()
    history = model.fit(X_train, y_train, epochs=20, batch_size=64,
                        optimizer=optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                        loss=nn.CrossEntropyLoss(), validation_data=(X_test, y_test))
    seconds = time.perf_counter() - t0
    print(f"{backend:>8}: test accuracy {history['val_accuracy'][-1]:.1%} "
          f"after 20 epochs, {seconds:.2f} s")

# Where does the time of one step go?  On a network and batch of the size
# of real training (784-512-256-10, batch 256, synthetic data) the matmuls
# dominate: that is the work parallel hardware speeds up.
import numpy as np  # noqa: E402

whygpu.manual_seed(0)
big = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                    nn.Linear(256, 10)).to("openmp" if "openmp" in nn.backends() else "numpy")
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 784)).astype(np.float32)
labels = rng.integers(0, 10, 256)
print(nn.step_breakdown(big, x, labels, nn.CrossEntropyLoss(), optim.SGD(big.parameters(), lr=0.01)))

# On a GPU the same step, first with the batch copied in every step, then with
# it kept in GPU memory: the table's "host <-> device copies" row is the difference.
if "cuda" in nn.backends():
    import whygpu.cuda as wc

    big.to("cuda")
    opt = optim.SGD(big.parameters(), lr=0.01)
    print(nn.step_breakdown(big, x, labels, nn.CrossEntropyLoss(), opt))
    print(nn.step_breakdown(big, wc.to_device(x), wc.to_device(labels), nn.CrossEntropyLoss(), opt))
