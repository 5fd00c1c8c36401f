"""Run against a build configured with -DWHYGPU_OPENMP=OFF: the package must
still work, and the openmp kernel must say it is unavailable."""
import numpy as np

import whygpu

kernels = whygpu.available_kernels()
assert "openmp" not in kernels, kernels
assert "packed" in kernels, kernels
assert "unavailable" in whygpu.kernel_info("openmp"), whygpu.kernel_info("openmp")
assert whygpu.cpu_info()["openmp"] is False
a = np.random.default_rng(0).standard_normal((37, 53)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((53, 29)).astype(np.float32)
for name in kernels:
    np.testing.assert_allclose(whygpu.matmul(a, b, kernel=name), a @ b, rtol=1e-4, atol=1e-4)
# the default kernel falls back to packed (named in `whygpu info`); asking for openmp by name still raises
assert whygpu.default_kernel() == "packed"
np.testing.assert_allclose(whygpu.matmul(a, b), a @ b, rtol=1e-4, atol=1e-4)
np.testing.assert_allclose(whygpu.gemm(a, b, alpha=2.0), 2 * a @ b, rtol=1e-4, atol=1e-4)
import subprocess, sys  # noqa: E401,E402
info = subprocess.run([sys.executable, "-m", "whygpu", "info"], capture_output=True, text=True, check=True).stdout
assert "default kernel" in info and "packed (this build has no OpenMP" in info, info
try:
    whygpu.matmul(a, b, kernel="openmp")
except whygpu.KernelUnavailableError as exc:
    assert "OpenMP" in str(exc), exc
else:
    raise AssertionError("matmul(kernel='openmp') did not raise without OpenMP")
print("no-OpenMP build: 1 passed, 0 failed")
