"""A progress bar with our own time estimate.

tqdm's remaining-time guess assumes every step takes as long as the average
so far, which is wrong here: the first measurements (small sizes) are fast,
the last (large sizes, slow kernels) slow.  The callers know a per-step
estimate, so the bar shows that instead.  Off unless asked for (the CLI
turns it on when stderr is a terminal)."""

from __future__ import annotations

import sys

from tqdm import tqdm

from .measure import format_seconds

__all__ = ["Progress"]


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.enabled = bool(enabled)
        self.total = total
        self._bar = None
        if self.enabled:
            self._bar = tqdm(
                total=total,
                desc=desc,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
            )

    def show(self, label: str, remaining_s: float | None) -> None:
        """Say what runs now and how long is left (our estimate; None: not known yet)."""
        if self._bar is not None:
            left = "" if remaining_s is None else f", ~{format_seconds(max(remaining_s, 0.0))} left"
            self._bar.set_postfix_str(label + left, refresh=True)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def extend(self, n: int) -> None:
        """Count ``n`` more steps than announced (a run measured once more): the total shown grows."""
        self.total += n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
