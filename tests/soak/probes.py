"""Measurements of the mixer, each adding its own data and checks to the soak's report.

A ``Probe`` is sampled about once a second while the load runs (``sample``) and
judged once the workers have stopped, before the backends are cleaned up
(``finish``), which returns its ``Section`` of the report. THE PLACE TO ADD A
MEASUREMENT: write a probe and list it in ``default_probes``. Issue 10 will add one
that reads the sizes of the mixer's in-memory maps from ``/mixer/api/status`` (sample
them, report the series, check that they go back down once the load is over).

* ``RelayProbe``: once the workers are done the mixer relays no websocket;
* ``ProcessProbe``: the mixer's RSS (``VmRSS`` of ``/proc/PID/status``) and open file
  descriptors stay flat. Why a tolerance on the RSS and not zero: the first requests of
  each kind import and cache things, CPython keeps freed memory in its own arenas and
  glibc's heap (RSS moves in steps and does not shrink on free), and aiohttp keeps
  keep-alive connections per backend that the remote's restarts recreate (see the
  figures in ``soak.py``'s docstring).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import MixerClient
from .ledger import MIB, Ledger

Check = tuple[bool, Any]  # passed, detail
# idle keep-alive connections the mixer may keep to each backend after the load
FD_TOLERANCE = 16


@dataclass
class Section:
    """A probe's part of the report: ``data`` goes to the report's top level (one key
    per probe, e.g. ``"rss"``), ``checks`` join the verdict."""

    data: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)


class Probe:
    """A measurement of the mixer; both steps are optional."""

    async def sample(self, now: float) -> None:
        """During the load, about once a second (``now``: seconds since the start)."""

    async def finish(self) -> Section:
        """After the load, before the cleanup."""
        return Section()


def default_probes(pid: int, client: MixerClient, args: argparse.Namespace) -> list[Probe]:
    return [RelayProbe(client), ProcessProbe(pid, client.ledger, args)]


# -- websockets still relayed --------------------------------------------------------------------


class RelayProbe(Probe):
    def __init__(self, client: MixerClient) -> None:
        self.client = client

    async def finish(self) -> Section:
        """Relayed websockets still open in the mixer (``/mixer/api/status``); must reach 0."""
        live = None
        for _ in range(40):
            with contextlib.suppress(Exception):
                status = await self.client.call("GET", "/mixer/api/status")
                live = status.get("websockets")
                if live == 0:
                    break
            await asyncio.sleep(0.25)
        return Section(
            data={"leftovers": {"relayed_websockets": live}},
            checks={"no websocket left relayed": (live == 0, str(live))},
        )


# -- the mixer process: memory and file descriptors ---------------------------------------------


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class ProcessProbe(Probe):
    """RSS at the end of the load at most the baseline plus ``max(--rss-tolerance-mib,
    --rss-tolerance-pct`` of the baseline); file descriptors after the load at most
    ``FD_TOLERANCE`` more than before it."""

    def __init__(self, pid: int, ledger: Ledger, args: argparse.Namespace) -> None:
        self.pid, self.ledger, self.args = pid, ledger, args
        self.rss: list[tuple[float, int]] = []
        self.fds: list[tuple[float, int]] = []

    async def sample(self, now: float) -> None:
        rss, fds = rss_bytes(self.pid), fd_count(self.pid)
        if rss is not None:
            self.rss.append((round(now, 3), rss))
        if fds is not None:
            self.fds.append((round(now, 3), fds))

    def latest_rss(self) -> str:
        return f"{self.rss[-1][1] / MIB:.1f} MiB" if self.rss else "?"

    async def finish(self) -> Section:
        after = fd_count(self.pid)
        first = self.fds[0][1] if self.fds else None
        fds_ok = None not in (first, after) and after <= first + FD_TOLERANCE  # type: ignore[operator]
        rss = self.rss_summary()
        fds = {
            "start": first,
            "end": self.fds[-1][1] if self.fds else None,
            "max": max((n for _, n in self.fds), default=None),
            "after_load": after,
        }
        return Section(
            data={"rss": rss, "fds": fds},
            checks={
                "memory flat": (rss["ok"], rss["text"]),
                "mixer file descriptors flat": (
                    fds_ok,
                    f"{first} before the load, {after} after it (tolerance +{FD_TOLERANCE})",
                ),
            },
        )

    def rss_summary(self) -> dict[str, Any]:
        """Baseline: the median over the 10 s after the warm-up; end: the median of the
        last 10 s of load; the growth per 1000 websocket cycles is reported too."""
        duration, args = self.args.duration, self.args
        warmup = args.warmup if args.warmup is not None else min(60.0, 0.2 * duration)
        span = 10.0
        base = [v for t, v in self.rss if warmup <= t < warmup + span]
        end = [v for t, v in self.rss if duration - span <= t <= duration]
        if not base or not end:
            return {"ok": False, "text": "not enough RSS samples", "samples": len(self.rss)}
        baseline, final = statistics.median(base), statistics.median(end)
        tolerance = max(args.rss_tolerance_mib * MIB, args.rss_tolerance_pct / 100 * baseline)
        growth = final - baseline
        cycles = self.ledger.websocket_cycles()
        per_1000 = growth / cycles * 1000 if cycles else 0.0
        return {
            "ok": growth <= tolerance,
            "text": (
                f"start {self.rss[0][1] / MIB:.1f} MiB, baseline (after {warmup:.0f}s warm-up) "
                f"{baseline / MIB:.1f} MiB, end {final / MIB:.1f} MiB, growth {growth / MIB:+.1f} MiB "
                f"(tolerance {tolerance / MIB:.1f} MiB; {per_1000 / 1024:+.1f} KiB per 1000 websocket cycles)"
            ),
            "start_bytes": self.rss[0][1],
            "baseline_bytes": baseline,
            "end_bytes": final,
            "max_bytes": max(v for _, v in self.rss),
            "tolerance_bytes": tolerance,
            "websocket_cycles": cycles,
            "series": [(t, round(v / MIB, 2)) for t, v in self.rss[:: max(1, len(self.rss) // 120)]],
        }
