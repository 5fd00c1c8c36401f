"""The pipeline schedules (GPipe, 1F1B) beside the pipeline that runs them: :mod:`whygpu.schedules`, re-exported.

They are pure functions and need no MPI: on a machine without mpi4py import them from ``whygpu.schedules``
(importing anything under ``whygpu.distributed`` imports mpi4py).
"""

from __future__ import annotations

from ..schedules import *  # noqa: F403  (the same names, one implementation)
from ..schedules import __all__  # noqa: F401
