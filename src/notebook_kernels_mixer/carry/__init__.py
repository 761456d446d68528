"""Switching keeps your variables (``--carry-variables``, SPEC §7): the user namespace
of a Python kernel carried into another kernel, through the mixer, when a notebook
session changes backends.

``carry_namespace`` is the one call (``engine``); it returns a ``CarryReport``
(``report``) and never raises for what kernels or backends do. ``kernel_code`` is what
runs inside the kernels, ``link`` the mixer's websocket to a kernel, ``wire`` the
Jupyter messages on it.
"""

from notebook_kernels_mixer.carry.engine import (
    CHUNK_SIZE,
    DEFAULT_BUDGET,
    DEFAULT_CAP,
    FINISH_SLACK,
    REPORT_VARIABLE,
    WINDOW,
    carry_namespace,
)
from notebook_kernels_mixer.carry.report import (
    FAILED,
    OK,
    OUTCOMES,
    PARTIAL,
    UNSUPPORTED,
    CarriedValue,
    CarryReport,
)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_BUDGET",
    "DEFAULT_CAP",
    "FAILED",
    "FINISH_SLACK",
    "OK",
    "OUTCOMES",
    "PARTIAL",
    "REPORT_VARIABLE",
    "UNSUPPORTED",
    "WINDOW",
    "CarriedValue",
    "CarryReport",
    "carry_namespace",
]
