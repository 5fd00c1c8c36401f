"""A sharded optimizer's state as a checkpoint holds it: per parameter, whatever the layout.

(being written)
"""

from __future__ import annotations


def consolidate(opt, to: int) -> None:
    raise NotImplementedError


def state_dict(opt) -> dict:
    raise NotImplementedError


def load_state_dict(opt, state: dict) -> None:
    raise NotImplementedError
