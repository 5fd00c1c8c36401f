"""The tensor-core lesson the GPU section includes: what a tensor core is, with this run's errors."""

from __future__ import annotations

from ..explain import format_error
from ._format import Block, Docs

_TENSOR_KERNELS = ("cuda_mma", "cuda_mma_bf16", "cuda_wgmma")


def _mentions_tensor_cores(docs: Docs, gpu: dict | None) -> bool:
    """Whether any result involves the tensor cores: a peak, a rung measured or listed as unavailable."""
    if (gpu or {}).get("tensor_gflops"):
        return True
    for d in docs.values():
        names = [
            r.get("kernel")
            for key in ("measurements", "points", "rows", "unavailable")
            for r in d.get(key) or []
            if isinstance(r, dict)
        ]
        if any(n in _TENSOR_KERNELS for n in names):
            return True
    return False


def _tensor_core_lesson(docs: Docs) -> list[Block]:
    """What a tensor core is, in plain words, with this run's numbers where there are any."""
    text = (
        "What a tensor core is: an ordinary GPU core does one fused multiply-add per lane per instruction. A "
        "tensor core is a small matrix-multiply unit: one instruction (mma.sync), issued by a whole warp of 32 "
        "threads, multiplies a 16 x 16 piece of A by a 16 x 8 piece of B and adds the result into a 16 x 8 "
        "float32 accumulator -- 4096 flops where a warp of FMAs does 64. The warp's operands are spread over "
        "its registers in fixed 'fragments'; rung 15 (cuda_mma) loads them with ldmatrix from shared memory "
        "that cp.async fills in the background, and rung 16 (cuda_wgmma, Hopper only) lets four warps issue "
        "one larger wgmma that reads shared memory directly, fed by the TMA copy engine. The price is "
        "precision: the tensor cores read short numbers -- TF32 (11 significant bits) or bfloat16 (8) -- "
        "so the results are off by about 1e-3 or 1e-2 relative instead of float32's 1e-7; the sums stay "
        "float32. Deep learning tolerates that, which is why training runs on tensor cores "
        '(whygpu: model.to("cuda", precision="bf16")).'
    )
    errs = (docs.get("ladder") or {}).get("errors") or {}
    measured = [(k, errs[k]) for k in _TENSOR_KERNELS if k in errs]
    if measured:
        text += (
            " Measured here: "
            + "; ".join(
                f"{k} ({e['precision']}) max relative error {format_error(e['max_rel_error'])} at n = {e['n']}"
                for k, e in measured
            )
            + "."
        )
    return [("p", text)]
