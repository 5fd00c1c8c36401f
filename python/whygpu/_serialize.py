"""whygpu.save and whygpu.load: state dicts and checkpoints in a ``.npz`` file, never pickle.

A ``.npz`` file is a zip archive of ``.npy`` arrays that NumPy (``np.load``),
and anything that reads zip and ``.npy``, opens without whygpu.  ``save``
writes every array of a nested dict under its path (``model/0.weight``,
``optimizer/state/0/exp_avg``), and one more entry, ``__whygpu__``, a JSON
text of the dict's shape: the numbers, strings, lists and dict keys, and
where each array goes.  ``load`` reads it back with ``allow_pickle=False``:
no code in a file is ever run.

Safety:

* Writing is atomic: the file is written beside the target under a
  temporary name, flushed to disk, then renamed over the target
  (``os.replace``), so a process killed during a save leaves the previous
  file whole.
* Each zip entry carries a CRC-32 that reading checks, and the JSON lists
  every array's shape and dtype: a truncated or corrupted file raises
  :class:`CheckpointError` (a ValueError) naming the file and what is wrong;
  a missing one FileNotFoundError.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["save", "load", "CheckpointError"]

_MANIFEST = "__whygpu__"
_FORMAT = "whygpu.save"
_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a whygpu checkpoint (truncated, corrupted, another format), or a
    checkpoint that does not fit what it is loaded into (another model, another optimizer)."""


def save(obj: Mapping, path: str | os.PathLike) -> None:
    """Write ``obj`` -- a dict of NumPy arrays, numbers, strings, booleans, None, and lists
    and dicts of them (``model.state_dict()``, ``opt.state_dict()``, a checkpoint) -- to
    ``path`` as a ``.npz`` file, atomically (a kill during the save leaves the previous file).

        whygpu.save(model.state_dict(), "mlp.npz")
        model.load_state_dict(whygpu.load("mlp.npz"))
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"whygpu.save writes a dict (a state dict or a checkpoint), got {type(obj).__name__}")
    path = os.fspath(path)
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(obj, "", arrays)
    manifest = json.dumps({"format": _FORMAT, "version": _VERSION, "tree": tree}, allow_nan=True)
    arrays[_MANIFEST] = np.frombuffer(manifest.encode("utf-8"), dtype=np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # a file object: numpy adds no ".npz" to the name
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself made durable (POSIX; a no-op where directories cannot be opened)
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def load(path: str | os.PathLike) -> dict:
    """Read a file written by :func:`save`: the same nested dict, arrays as NumPy arrays.

    Raises FileNotFoundError when there is no file, and :class:`CheckpointError` when it
    is not a whole whygpu file (truncated, corrupted, or another kind of file)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:  # closed even when np.load fails
            names = set(npz.files)
            if _MANIFEST not in names:
                raise CheckpointError(
                    f"{path!r} is a .npz file but not one whygpu.save wrote (no {_MANIFEST!r} entry); "
                    f"read its arrays with np.load"
                )
            head = json.loads(bytes(npz[_MANIFEST]).decode("utf-8"))
            if not isinstance(head, dict) or head.get("format") != _FORMAT:
                raise CheckpointError(f"{path!r}: its {_MANIFEST!r} entry is not a whygpu manifest")
            if head.get("version") != _VERSION:
                raise CheckpointError(
                    f"{path!r} was written by another version of the format ({head.get('version')!r}; "
                    f"this whygpu reads {_VERSION})"
                )
            return _decode(head["tree"], npz, names)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        if isinstance(e, OSError) and not os.path.isfile(path):
            raise
        raise CheckpointError(f"{path!r} is not a readable whygpu checkpoint (truncated or corrupted?): {e}") from e


# -- the dict's shape as JSON, the arrays beside it ------------------------------------------
def _encode(obj: Any, where: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, np.ndarray) or _is_tensor(obj):
        arr = np.ascontiguousarray(obj if isinstance(obj, np.ndarray) else obj.detach().cpu().numpy())
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"whygpu.save stores arrays of numbers; {where or 'the value'} has dtype {arr.dtype}")
        key = where or "value"
        arrays[key] = arr
        return {"array": key, "shape": list(arr.shape), "dtype": arr.dtype.str}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    if isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(
                    f"whygpu.save: dict keys must be strings or integers, got {k!r} in {where or 'the dict'}"
                )
            if isinstance(k, str) and ("/" in k or k == _MANIFEST):
                raise ValueError(f"whygpu.save: a key may not contain '/' or be {_MANIFEST!r}, got {k!r}")
            items.append([k, _encode(v, f"{where}/{k}" if where else str(k), arrays)])
        return {"dict": items}
    if isinstance(obj, (list, tuple)):
        kind = "list" if isinstance(obj, list) else "tuple"
        return {kind: [_encode(v, f"{where}/{i}" if where else str(i), arrays) for i, v in enumerate(obj)]}
    raise TypeError(
        f"whygpu.save stores arrays, numbers, strings, booleans, None, lists and dicts; "
        f"{where or 'the value'} is a {type(obj).__name__}"
    )


def _decode(node: Any, npz, names: set) -> Any:
    if not isinstance(node, dict) or len(node) not in (1, 3):
        raise CheckpointError(f"the manifest holds an entry whygpu does not know: {node!r:.80}")
    if "array" in node:
        key = node["array"]
        if key not in names:
            raise CheckpointError(f"the array {key!r} the manifest lists is missing from the file")
        arr = npz[key]
        if list(arr.shape) != node["shape"] or arr.dtype.str != node["dtype"]:
            raise CheckpointError(
                f"the array {key!r} is {arr.dtype.str} {list(arr.shape)} "
                f"but was saved as {node['dtype']} {node['shape']}"
            )
        return arr
    if "value" in node:
        return node["value"]
    if "dict" in node:
        return {k: _decode(v, npz, names) for k, v in node["dict"]}
    if "list" in node:
        return [_decode(v, npz, names) for v in node["list"]]
    if "tuple" in node:
        return tuple(_decode(v, npz, names) for v in node["tuple"])
    raise CheckpointError(f"the manifest holds an entry whygpu does not know: {node!r:.80}")


def _is_tensor(obj) -> bool:
    """A PyTorch tensor on the CPU (saved as its NumPy array), without importing torch."""
    return type(obj).__module__ == "torch" and type(obj).__name__ == "Tensor" and hasattr(obj, "numpy")
