# Reference solutions of notebooks/01_why_gpus.ipynb, and a planted wrong answer for each exercise
# (tests/test_notebook_labs.py runs the notebook with them; tests/_labs.py reads this format).

# %% 01.predict_ratio
# Predict from the roofline model, before timing anything: each rung's roof on this machine.
model = whygpu.explain(N, N, N, kernels=["naive", "packed"], measure=False)
predicted = {r["kernel"]: r["predicted_gflops"] for r in model.rows}
my_ratio = predicted["packed"] / predicted["naive"]

measured_ratio = gflops("packed", N)[0] / gflops("naive", N)[0]
lab.check("01.predict_ratio", my_ratio, measured=measured_ratio)

# %% wrong 01.predict_ratio
my_ratio = 1.0  # "same operations, same time": the one-operation-per-nanosecond shortcut

measured_ratio = gflops("packed", N)[0] / gflops("naive", N)[0]
lab.check("01.predict_ratio", my_ratio, measured=measured_ratio)


# %% 01.loop_order
def matmul(A, B):
    m, k = A.shape
    C = np.zeros((m, B.shape[1]), dtype=np.float32)
    for i in range(m):
        for p in range(k):
            C[i, :] += A[i, p] * B[p, :]
    return C


loop_ok = lab.check("01.loop_order", matmul)


# %% wrong 01.loop_order
def matmul(A, B):
    m, k = A.shape
    C = np.zeros((m, B.shape[1]), dtype=np.float32)
    for i in range(m):
        for p in range(k):
            C[i, :] = A[i, p] * B[p, :]  # = where += belongs: row i keeps only the last p's term
    return C


loop_ok = lab.check("01.loop_order", matmul)


# %% 01.serial_fraction
def serial_fraction(S, p):
    return (p / S - 1) / (p - 1)


sf_ok = lab.check("01.serial_fraction", serial_fraction)


# %% wrong 01.serial_fraction
def serial_fraction(S, p):
    return 1 - S / p  # one minus the efficiency: not Amdahl's s


sf_ok = lab.check("01.serial_fraction", serial_fraction)
