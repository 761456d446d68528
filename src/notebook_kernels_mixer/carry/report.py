"""What one carry did: the value the engine returns, the status API shows and the log
line says (names and sizes, never values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Every eligible variable was carried.
OK = "ok"
#: Some were carried, some were not (``skipped`` says which and why; ``reason`` says
#: why the carry stopped early, if it did).
PARTIAL = "partial"
#: Nothing was carried, because of ``reason`` (busy, dead or frozen kernel, budget…).
FAILED = "failed"
#: One of the kernels is not a Python kernel: nothing was tried.
UNSUPPORTED = "unsupported"
OUTCOMES = (OK, PARTIAL, FAILED, UNSUPPORTED)


def human_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class CarriedValue:
    """One variable now in the target kernel: its type (``numpy.ndarray``, ``int``;
    ``module`` for a module imported again by name) and its serialized size."""

    name: str
    type: str
    size: int
    module: str | None = None  # for type == "module": the module's name

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "size": self.size}
        if self.module is not None:
            out["module"] = self.module
        return out


@dataclass(frozen=True)
class CarryReport:
    outcome: str
    #: Why the carry stopped or did not start (None when it ran to its end).
    reason: str | None
    carried: tuple[CarriedValue, ...]
    #: name → why it stayed behind (not serializable, over the cap, not restorable…).
    skipped: dict[str, str]
    #: Serialized bytes that reached the target kernel.
    bytes: int
    seconds: float
    #: "cloudpickle" or "pickle" (None: the carry ended before choosing).
    serializer: str | None
    source: str  # backend name
    source_kernel: str
    target: str
    target_kernel: str
    #: Whether the target kernel got the report as ``_mixer_carry``.
    in_kernel: bool = False

    @property
    def carried_names(self) -> list[str]:
        return [c.name for c in self.carried]

    def to_json(self) -> dict[str, Any]:
        """For the status API and the target kernel's report variable."""
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "carried": [c.to_json() for c in self.carried],
            "skipped": dict(self.skipped),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "serializer": self.serializer,
            "source": f"{self.source} (kernel {self.source_kernel})",
            "target": f"{self.target} (kernel {self.target_kernel})",
            "in_kernel": self.in_kernel,
        }

    def log_line(self) -> str:
        """One line for the log: counts, sizes, time and outcome (no names, no values)."""
        line = (
            f"carry {self.source}/{self.source_kernel} -> {self.target}/{self.target_kernel}: "
            f"{self.outcome}, {len(self.carried)} carried, {len(self.skipped)} skipped, "
            f"{human_size(self.bytes)} in {self.seconds:.2f} s"
        )
        if self.serializer:
            line += f" ({self.serializer})"
        if self.reason:
            line += f"; {self.reason}"
        return line
