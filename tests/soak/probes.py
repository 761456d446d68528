"""Measurements of the mixer, each adding its own data and checks to the soak's report.

A ``Probe`` is sampled about once a second while the load runs (``sample``) and
judged once the workers have stopped, before the backends are cleaned up
(``finish``), which returns its ``Section`` of the report. THE PLACE TO ADD A
MEASUREMENT: write a probe and list it in ``default_probes``.

* ``RelayProbe``: once the workers are done the mixer relays no websocket;
* ``MapsProbe``: the sizes of the mixer's in-memory maps (``/mixer/api/status``
  "memory"), sampled every 5 s while kernels and sessions also come and go behind the
  mixer's back (``churn.py``); once the load is over each map is no larger than what
  the backends hold (issue 10 item 3: memory bounded by the backends, for days);
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .churn import BackdoorChurn
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
    return [RelayProbe(client), ProcessProbe(pid, client.ledger, args), MapsProbe(client)]


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


# -- the mixer's maps ----------------------------------------------------------------------------

MAPS_EVERY = 5.0
SETTLE_WITHIN = 30.0  # after the load: a down-marked remote is probed back, then listed
# each map of "memory" and what bounds it once the load is over: what the backends hold
MAP_BOUNDS = {
    "kernels": ("kernels",), "first_seen": ("kernels",), "created": ("kernels",),
    "sessions": ("sessions",), "session_aliases": ("sessions",), "kept_sessions": ("sessions",),
    "timestamps": ("kernels", "sessions"), "websockets": (), "websocket_sessions": (),
}  # fmt: skip


class MapsProbe(Probe):
    """The mixer's map sizes, sampled in a task of their own (``/mixer/api/status`` asks
    every backend), and the churn behind its back, started with the first sample."""

    def __init__(self, client: MixerClient) -> None:
        self.client = client
        self.churn = BackdoorChurn(client.stack, client.http, client.ledger)
        self.series: list[tuple[float, dict[str, int]]] = []
        self.errors = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def sample(self, now: float) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._watch()), asyncio.create_task(self.churn.run())]

    async def _watch(self) -> None:
        ledger = self.client.ledger
        while ledger.running():
            try:
                self.series.append((round(ledger.now(), 1), await self.memory()))
            except Exception:
                self.errors += 1
            await ledger.pause(MAPS_EVERY)

    async def memory(self) -> dict[str, int]:
        status = await self.client.call("GET", "/mixer/api/status")
        return {k: v for k, v in status["memory"].items() if isinstance(v, int)}

    async def held(self) -> dict[str, int]:
        """Kernels and sessions the backends hold, asked straight."""
        counts = {"kernels": 0, "sessions": 0}
        for backend in ("local", "remote"):
            api = self.churn.api(backend)
            for kind in counts:
                counts[kind] += len(await api.ok_json("GET", f"/api/{kind}"))
        return counts

    async def settled(self) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
        """After the load: the maps, what the backends hold, and what exceeds its bound,
        once nothing does (or ``SETTLE_WITHIN`` has passed)."""
        deadline = time.monotonic() + SETTLE_WITHIN
        while True:
            memory, held, over = {}, {}, {"status": "no answer"}
            with contextlib.suppress(Exception):
                held = await self.held()
                memory = await self.memory()
                over = {}
                for key, kinds in MAP_BOUNDS.items():
                    bound = sum(held[k] for k in kinds)
                    if key not in memory:
                        over[key] = "missing from /mixer/api/status"
                    elif memory[key] > bound:
                        over[key] = f"{memory[key]} > {bound}"
            if not over or time.monotonic() > deadline:
                return memory, held, over
            await asyncio.sleep(1.0)

    async def finish(self) -> Section:
        done, pending = await asyncio.wait(self._tasks, timeout=90) if self._tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.churn.delete_all()
        memory, held, over = await self.settled()
        peak = {k: max((m.get(k, 0) for _, m in self.series), default=None) for k in MAP_BOUNDS}
        text = (f"peak {peak}; after the load {memory} for {held} held by the backends"
                + (f"; OVER: {over}" if over else ""))
        churn = dict(self.churn.counts)
        made = [k for k in ("kernels", "sessions")
                if sum(n for name, n in churn.items() if name.endswith(f"{k} created")) > 0]
        return Section(
            data={"maps": {
                "text": text, "peak": peak, "after_load": memory, "held_after_load": held,
                "over": over, "status_errors": self.errors, "churn_behind_the_back": churn,
                "series": self.series[:: max(1, len(self.series) // 120)],
            }},
            checks={
                "mixer maps bounded by what the backends hold": (bool(self.series) and not over, text),
                "churn behind the mixer's back (kernels and sessions)": (
                    made == ["kernels", "sessions"], churn),
            },
        )  # fmt: skip
