"""The words a student may not know: one plain sentence each, linked from where the page first uses them.

:func:`section` returns the glossary of the terms the page actually uses (none of the
others), placed near the end; the HTML renderer (``render._to_html``) turns the first
use of each into a link to its entry, with the sentence as a tooltip.  The scale-out
section explains its own words (rank, allreduce, ring, bucket, ...) where it uses them, and the
glossary holds them too, from the same sentences.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ._format import Block
from .scaleout import GLOSSARY as _SCALEOUT_GLOSSARY

# (anchor, the term as shown, what finds it in the text, the sentence)
TERMS: tuple[tuple[str, str, str, str], ...] = (
    (
        "simd",
        "SIMD",
        r"SIMD",
        "Single instruction, multiple data: one instruction works on a short vector of numbers at once "
        "(16 float32 numbers with AVX-512, 8 with AVX2).",
    ),
    (
        "isa",
        "instruction set (AVX2, AVX-512)",
        r"instruction set|AVX-512|AVX2|avx512|avx2",
        "Which instructions a CPU has; for this story, how wide its vectors are: AVX2 has 256-bit vectors "
        "(8 float32), AVX-512 512-bit ones (16 float32).",
    ),
    (
        "fma",
        "FMA and the FMA peak",
        r"FMA",
        "Fused multiply-add: a x b + c in one instruction.  A core issuing two vector FMAs per cycle does "
        "2 x 2 x (vector width) flops a cycle: its FMA peak, the most arithmetic it can do.",
    ),
    (
        "gflops",
        "GFLOP/s",
        r"GFLOP/s",
        "Billions of floating-point operations (adds and multiplies) per second.",
    ),
    (
        "caches",
        "L1, L2, L3 caches and DRAM",
        r"L1d?|L2|L3|DRAM",
        "Caches are small, fast memories next to each core (L1 tens of KiB, L2 about a MiB) or shared by all "
        "(L3, tens of MiB) that keep recently used data; DRAM is the main memory: far larger, and several "
        "times slower to stream from.",
    ),
    (
        "goto",
        "Goto/BLIS",
        r"Goto/BLIS|BLIS",
        "How fast matrix libraries (Kazushige Goto's GotoBLAS, then BLIS and OpenBLAS) organise a product: "
        "five loops around a small kernel, with blocks of A and B copied ('packed') so that each streams "
        "through the cache level it fits.",
    ),
    (
        "microkernel",
        "micro-kernel",
        r"micro-kernel",
        "The innermost part of those loops: it keeps a small tile of C in vector registers and adds to it, "
        "one column of A times one row of B per step.",
    ),
    (
        "openmp",
        "OpenMP",
        r"OpenMP",
        "The standard way for C and C++ code to share a loop among cores (#pragma omp parallel).",
    ),
    (
        "interleaved",
        "interleaved timing",
        r"interleaved",
        "Kernels timed in turns (A B C A B C ...), so a slow spell of the machine hits all of them alike "
        "instead of one.",
    ),
    (
        "stream",
        "STREAM triad",
        r"STREAM triad",
        "The standard memory-bandwidth benchmark: a[i] = b[i] + s x c[i] over arrays sized for one level "
        "of the memory.",
    ),
    (
        "rfo",
        "read for ownership",
        r"read for ownership",
        "Before a core writes into a cache line it does not hold, it reads the line from memory: a write "
        "costs a read as well.",
    ),
    (
        "tlb",
        "TLB",
        r"TLB",
        "Translation lookaside buffer: the core's small cache of where each 4 KiB page of memory really is; "
        "touching a page it does not hold waits for a lookup in memory.",
    ),
    (
        "tensorcore",
        "tensor cores, TF32 and bf16",
        r"tensor[- ]cores?|TF32|bf16",
        "GPU units that multiply small matrix tiles in one instruction, on short numbers: TF32 keeps 11 "
        "significant bits and bf16 8, against float32's 24.",
    ),
    (
        "cublas",
        "cuBLAS",
        r"cuBLAS",
        "NVIDIA's own matrix library: the reference a hand-written GPU kernel is held against.",
    ),
)

# The words of the story's arguments: what limits a kernel, what threads and ranks buy, how figures are judged.
TERMS += (
    (
        "speedup",
        "speed-up",
        r"speed-ups?",
        "How many times faster: the old time over the new one (x2 is twice as fast, x0.5 half as fast). Here "
        "it is always between two measurements of one size, from their median times.",
    ),
    (
        "median",
        "median and min-max",
        r"median|min-max",
        "A figure here is the median of several timed samples (the middle one, unmoved by one slow sample); "
        "min-max is the range of the samples, the spread the noise allows.",
    ),
    (
        "noise",
        "within the noise",
        r"within the noise|noise",
        "Two figures whose min-max spreads overlap: the measurements cannot tell which is faster, so neither is "
        "called faster.",
    ),
    (
        "disturbed",
        "disturbed",
        r"disturbed",
        "A figure the hardware cannot produce (above the measured peak, a speed-up above the cores): another "
        "program took the machine while it was measured, so it is shown, flagged and left out of the conclusions.",
    ),
    (
        "blas",
        "BLAS (OpenBLAS, MKL)",
        r"BLAS|OpenBLAS|MKL",
        "Basic Linear Algebra Subprograms: the standard interface of matrix libraries; NumPy's a @ b calls one "
        "(OpenBLAS or Intel's MKL), tuned by hand for each CPU.",
    ),
    (
        "vectorize",
        "vectorize, unit stride",
        r"vectori[sz]es?|vectori[sz]ed|unit-stride|unit stride",
        "A loop the compiler turns into SIMD instructions; it can when the loop walks memory one element after "
        "the next (unit stride), so a vector load takes neighbouring numbers.",
    ),
    (
        "cacheblocking",
        "cache blocking (tiling)",
        r"cache[- ]block(?:ing|ed)|cache-sized tiles|blocking",
        "Working on tiles of the matrices small enough to stay in a cache, so each number loaded from memory "
        "is used many times before it is evicted.",
    ),
    (
        "registerblocking",
        "register blocking",
        r"register[- ](?:blocking|blocked|tiled|tiling|tiles?)",
        "The same idea one level closer to the arithmetic: a small tile of C is kept in the vector registers "
        "while A and B stream past, so each load feeds several FMAs.",
    ),
    (
        "packing",
        "packing",
        r"pack(?:ed|ing) (?:panels?|blocks?|A|B)|packing",
        "Copying a block of A or B into a contiguous buffer in the order the micro-kernel reads it, so its "
        "loads are unit-stride and it stays in cache.",
    ),
    (
        "prefetcher",
        "hardware prefetcher",
        r"hardware prefetchers?",
        "Circuitry in the core that spots a regular walk through memory and fetches the next cache lines "
        "before they are asked for, hiding memory's latency for in-order streams.",
    ),
    (
        "roofline",
        "roofline",
        r"roofline|roofs?",
        "A model of a kernel's speed: the lower of its compute roof (the arithmetic it can issue) and its "
        "arithmetic intensity times the bandwidth of the memory its data comes from.",
    ),
    (
        "intensity",
        "arithmetic intensity (flop/byte)",
        r"arithmetic intensity|intensity|flop/byte|FLOPs per gradient byte",
        "Floating-point operations per byte moved: high, a kernel is compute-bound; low, memory-bound.",
    ),
    (
        "bound",
        "compute-bound, memory-bound",
        r"(?:compute|memory|bandwidth)[- ]bound",
        "Which limit of the roofline a kernel sits under: the arithmetic (compute-bound) or the bytes it must "
        "move (memory-bound).",
    ),
    (
        "bandwidth",
        "bandwidth (GB/s)",
        r"bandwidth|GB/s",
        "Bytes per second a memory (or a link between machines) delivers once a transfer is under way.",
    ),
    (
        "amdahl",
        "Amdahl's law",
        r"Amdahl(?:'|&#x27;)s law",
        "If a fraction f of the work cannot be parallelised, p cores give at most 1 / (f + (1 - f) / p), and "
        "no number of cores more than 1/f.",
    ),
    (
        "serial",
        "serial fraction",
        r"serial fractions?|serial part",
        "The share f of the work that runs on one core whatever the others do; Amdahl's law fits it to the "
        "speed-ups measured on several thread counts.",
    ),
    (
        "threads",
        "thread, core",
        r"threads?|cores?",
        "A core is one processor of the chip; a thread is one stream of instructions the program runs on a "
        "core. More threads than cores take turns (oversubscription).",
    ),
    (
        "efficiency",
        "scaling efficiency",
        r"efficiency",
        "Speed-up over the number of ranks or cores: 100% is perfect scaling, every added rank paying in full.",
    ),
    (
        "strongweak",
        "strong and weak scaling",
        r"(?:strong|weak)[- ]scaling",
        "Strong scaling: more ranks on a fixed global batch, each rank's share shrinking. Weak scaling: each "
        "rank keeps its batch, so the global batch grows with the ranks.",
    ),
    (
        "dataparallel",
        "data parallelism",
        r"[Dd]ata parallelism|[Dd]ata-parallel|DataParallel",
        "Every rank holds a copy of the model, trains on its share of each batch, and the ranks add up their "
        "gradients so that all copies take the same step.",
    ),
    (
        "mpi",
        "MPI",
        r"MPI",
        "The Message Passing Interface: the standard library with which separate processes (ranks) send each "
        "other data and run collectives such as an allreduce.",
    ),
    (
        "training",
        "training step, batch, SGD, Adam",
        r"training step|batch|SGD|Adam|backward pass|forward pass",
        "One step of training: the forward pass computes the loss on a batch of samples, the backward pass "
        "its gradient, and the optimizer (SGD, or Adam with its two moments per parameter) updates the weights.",
    ),
    (
        "mixed",
        "mixed precision",
        r"[Mm]ixed precision|fp16|fp32",
        "Parameters and gradients in 2-byte floats (fp16/bf16) for speed, with an fp32 master copy in the "
        "optimizer for accuracy.",
    ),
    (
        "gpu",
        "GPU, CUDA",
        r"GPU|CUDA",
        "A graphics processor: thousands of simple lanes running one program over many data; CUDA is NVIDIA's "
        "way to program it.",
    ),
    (
        "tensorparallel",
        "tensor parallelism",
        r"[Tt]ensor parallelism|[Tt]ensor-parallel",
        "Each layer's matrices cut across the ranks: every rank holds and multiplies a slice of every layer, and "
        "the ranks add their partial results with an allreduce, forward and backward.",
    ),
    (
        "pipelineparallel",
        "pipeline parallelism, stage",
        r"[Pp]ipeline parallelism|[Pp]ipeline-parallel",
        "The model's layers cut into contiguous stages, one per rank; micro-batches flow through them, each "
        "rank sending its output to the next stage and the gradient back to the one before.",
    ),
    (
        "microbatch",
        "micro-batch",
        r"micro-batch(?:es)?",
        "One of the m pieces a pipeline cuts each batch into, so that several stages can work at once, each on "
        "its own piece.",
    ),
    (
        "bubble",
        "bubble",
        r"bubble",
        "The idle share of a pipeline's ranks' time: while the pipeline fills and drains some stages have no "
        "micro-batch to work on; with p stages and m micro-batches of equal steps, (p - 1)/(m + p - 1).",
    ),
    (
        "schedules",
        "GPipe, 1F1B",
        r"GPipe|1F1B",
        "Two pipeline schedules: GPipe runs every micro-batch's forward pass, then every backward; 1F1B "
        "alternates one forward and one backward once the pipeline is full, so it keeps fewer activations.",
    ),
    (
        "stash",
        "stash",
        r"stash",
        "The activations a pipeline stage keeps for each micro-batch whose backward pass has not run yet.",
    ),
    (
        "quiet",
        "quiet guard",
        r"[Qq]uiet guard",
        "whygpu's check that no other program uses the cores while it measures: it waits for a quiet machine "
        "and records what other programs used before and during each measurement.",
    ),
)
# The scale-out section's own words (rank, allreduce, ...), defined there where it uses them: listed here too, so
# the page's glossary holds every term the page uses.
_SCALEOUT = {
    "rank": r"ranks?",
    "allreduce": r"[Aa]llreduce",
    "ring": r"ring",
    "bucket": r"buckets?(?:\(s\))?",
    "exposed": r"exposed",
    "alpha (latency)": r"alpha|latency",
    "shard": r"shards?|sharded|sharding",
    "ZeRO": r"ZeRO",
    "reduce-scatter": r"[Rr]educe[-_][Ss]catter",
    "allgather": r"[Aa]llgather",
}
TERMS += tuple(
    ("so_" + re.sub(r"\W+", "_", w.lower()).strip("_"), w, _SCALEOUT[w], d[0].upper() + d[1:])
    for w, d in _SCALEOUT_GLOSSARY
    if w in _SCALEOUT
)

_PATTERNS = {slug: re.compile(r"(?<![\w/-])(?:" + rx + r")(?![\w-])") for slug, _, rx, _ in TERMS}
TITLE = "Words used in this report"


def _texts(blocks: Sequence[Block]):
    """The running text of the blocks a student reads (not the headings)."""
    for b in blocks:
        if b[0] == "p" or b[0] == "pre":
            yield b[1]
        elif b[0] == "fig":
            yield b[2]
        elif b[0] == "ul":
            yield from b[1]
        elif b[0] == "table":
            for row in [b[1], *b[2]]:
                yield from (str(c) for c in row)


def used_terms(blocks: Sequence[Block]) -> list[tuple[str, str, str]]:
    """(anchor, term, sentence) of each term the blocks use, in glossary order."""
    text = "\n".join(_texts(blocks))
    return [(slug, term, sentence) for slug, term, _, sentence in TERMS if _PATTERNS[slug].search(text)]


def section(blocks: Sequence[Block]) -> list[Block]:
    terms = used_terms(blocks)
    if not terms:
        return []
    return [("h2", TITLE), ("glossary", terms)]


def link_first_uses(escaped: str, linked: set[str]) -> str:
    """HTML: the first use of each term not linked yet becomes a link to its entry (sentence as tooltip).
    ``escaped`` is already HTML-escaped text; the terms contain nothing escaping changes.  All matches
    are found in the text as given, so no term is ever looked for inside another's link."""
    found = []
    for slug, _, _, sentence in TERMS:
        if slug not in linked:
            m = _PATTERNS[slug].search(escaped)
            if m is not None:
                found.append((m.start(), m.end(), slug, sentence))
    out, pos = [], 0
    for start, end, slug, sentence in sorted(found):
        if start < pos:  # overlaps a term linked just before: left for a later use
            continue
        linked.add(slug)
        tip = sentence.replace("'", "&#x27;")
        out += [escaped[pos:start], f"<a class='term' href='#g-{slug}' title='{tip}'>{escaped[start:end]}</a>"]
        pos = end
    out.append(escaped[pos:])
    return "".join(out)
