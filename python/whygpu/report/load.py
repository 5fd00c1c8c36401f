"""Reading results: the JSON files the subcommands and pytest-benchmark write, sorted by kind."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Callable

# the kinds of whygpu's own documents, by their schema's name ("whygpu.<kind>/<version>")
KINDS = ("info", "ladder", "scaling", "roofline", "train", "scaleout", "scaleout-heldout", "split", "explain", "demo")


class ResultsError(ValueError):
    """A results file that is not one whygpu understands."""


def classify(doc) -> str:
    """'info', 'ladder', 'scaling', 'roofline', 'train', 'scaleout', 'scaleout-heldout' (``whygpu scaleout
    --held-out``), 'split' (``whygpu scaleout --strategy``), 'explain', 'demo' or 'benchmark' (pytest-benchmark),
    by the document's keys."""
    if not isinstance(doc, dict):
        raise ResultsError("not a JSON object")
    schema = doc.get("schema")
    if isinstance(schema, str) and schema.startswith("whygpu."):
        kind = schema[len("whygpu.") :].split("/")[0]
        if kind in KINDS:
            return kind
        raise ResultsError(f"unknown whygpu schema {schema!r}")
    if isinstance(doc.get("benchmarks"), list) and "machine_info" in doc:
        return "benchmark"
    raise ResultsError(
        "neither a whygpu result (no 'schema' field) nor pytest-benchmark JSON (no 'benchmarks' and 'machine_info')"
    )


def load_results(paths: Iterable, log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Read result files (or folders of them) into {kind: document}.  A later
    document of the same kind replaces an earlier one (``log`` is told which),
    except benchmarks, which are merged."""
    paths = list(paths)
    docs: dict[str, dict] = {}
    origin: dict[str, Path] = {}
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.glob("*.json"))
            if not found:
                raise ResultsError(f"{p}: folder has no .json files")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise ResultsError(f"{p}: no such file or folder")
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultsError(f"{f}: cannot read: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{f}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        try:
            kind = classify(doc)
        except ResultsError as exc:
            if f.parent in [Path(x) for x in paths if Path(x).is_dir()]:
                continue  # a folder may hold other JSON; skip it
            raise ResultsError(f"{f}: {exc}") from None
        if kind == "demo":
            continue  # the index the demo writes; its parts are separate files
        if kind == "benchmark" and "benchmark" in docs:
            docs["benchmark"]["benchmarks"] += doc["benchmarks"]
        else:
            if kind in docs and log is not None:
                log(f"{f} replaces {origin[kind]}: the report has one {kind} result, the last one given")
            docs[kind] = doc
            origin[kind] = f
    if not docs:
        raise ResultsError("no whygpu or pytest-benchmark results found")
    return docs
