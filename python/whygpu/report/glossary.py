"""The words a student may not know: one plain sentence each, linked from where the page first uses them.

:func:`section` returns the glossary of the terms the page actually uses (none of the
others), placed near the end; the HTML renderer (``render._to_html``) turns the first
use of each into a link to its entry, with the sentence as a tooltip.  The scale-out
section explains its own words (rank, allreduce, ring, bucket, ...) where it uses them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ._format import Block

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
