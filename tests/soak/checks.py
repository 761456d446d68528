"""The soak's verdict: which failures the remote's restarts explain, and the checks.

* local: zero lost, zero misrouted, zero failed operations, except failures the local
  jupyter_server caused itself with a 5xx;
* remote: zero misrouted; every failed operation overlaps a down window (+ grace),
  concerns a kernel/session that died with an earlier restart ("stale"), is the
  remote's own 5xx, or is an operation refused (1011) on a kernel the backend's log
  shows dying at start (jupyter_client's port race, matched by the port to that kernel's
  id, one failure per such kernel); after each restart remote executes succeed again;
* the work happened: replies on both backends, a restart, switches both ways;
* the probes' checks (``probes.py``), then nothing orphaned, the mixer alive and no
  traceback in its log.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import asdict
from typing import Any

from .ledger import Ledger
from .probes import Check, Section


def explain(ledger: Ledger, grace: float, failed_starts: dict[str, list[str]] | None = None) -> None:
    """Label each failure with what explains it ("" when nothing does).

    ``failed_starts``: per backend, the ids of the kernels its log shows dying at start
    (a port taken between jupyter_client's choice and the kernel's bind: upstream).
    Such a kernel explains one failure of an operation on that very kernel whose
    websocket was closed with 1011 (the mixer refusing it), and nothing else: a 1011
    for an unreachable backend, or on another kernel, stays unexplained.
    """
    budget = {(backend, kernel) for backend, kernels in (failed_starts or {}).items()
              for kernel in kernels}
    for f in ledger.failures:
        for w in ledger.windows:
            up = w.up if w.up is not None else float("inf")
            # a kernel or session created after the server came back owes nothing to the restart
            born_after = f.created is not None and f.created > up
            if f.t0 <= up + grace and f.t1 >= w.down and not born_after:
                f.explained = "down window"
                break
        else:
            if f.stale:
                f.explained = "stale"
            elif f.backend_5xx:
                f.explained = "backend's own 5xx"
            elif (f.backend, f.kernel) in budget and "close_code=1011" in f.detail:
                budget.discard((f.backend, f.kernel))
                f.explained = "kernel failed to start on the backend"


def backend_checks(ledger: Ledger, args: argparse.Namespace) -> dict[str, Check]:
    local, remote = ledger.tally["local"], ledger.tally["remote"]
    local_all = [f for f in ledger.failures if f.backend == "local"]
    local_failures = [f for f in local_all
                      if not f.backend_5xx and f.explained != "kernel failed to start on the backend"]
    remote_failures = [f for f in ledger.failures if f.backend == "remote"]
    unexplained = [f for f in remote_failures if not f.explained]
    recovered = []
    for w in ledger.windows:
        if w.up is None or w.up + args.grace > args.duration - 2:
            continue  # the run ended before a recovery could be seen
        recovered.append(any(t > w.up for t in ledger.successes_after["remote"]))
    return {
        "local: no lost execute replies": (local.lost == 0, f"{local.lost} lost"),
        "local: no misrouted execute replies": (local.misrouted == 0, f"{local.misrouted} misrouted"),
        "local: no failed operation (but the backend's own 5xx)": (
            not local_failures,
            f"{len(local_failures)} failed; {len(local_all) - len(local_failures)} more by its own 5xx",
        ),
        "remote: no misrouted execute replies": (remote.misrouted == 0, f"{remote.misrouted} misrouted"),
        "remote: failures only in down windows (+grace), on stale objects or its own 5xx": (
            not unexplained,
            f"{len(unexplained)} outside, {len(remote_failures)} in all",
        ),
        "remote: executes succeed again after each restart": (
            bool(recovered) and all(recovered),
            f"{sum(recovered)}/{len(recovered)} restarts observed",
        ),
    }


def work_checks(ledger: Ledger) -> dict[str, Check]:
    local, remote = ledger.tally["local"], ledger.tally["remote"]
    return {
        "work: replies on both backends": (
            local.execute_replies > 0 and remote.execute_replies > 0,
            f"local {local.execute_replies}, remote {remote.execute_replies}",
        ),
        "work: the remote was restarted": (len(ledger.windows) > 0, f"{len(ledger.windows)} restarts"),
        "work: sessions switched both ways": (
            ledger.switches["local -> remote"] > 0 and ledger.switches["remote -> local"] > 0,
            dict(ledger.switches),
        ),
    }


def end_checks(extra: dict[str, Any]) -> dict[str, Check]:
    return {
        "nothing orphaned on the backends": (
            not extra["cleanup"],
            f"deleted afterwards: {extra['cleanup'] or 'nothing'}",
        ),
        "mixer alive": (extra["mixer_alive"], ""),
        "no traceback in the mixer log": (not extra["log_tracebacks"], f"{extra['log_tracebacks']} found"),
    }


def failures_report(ledger: Ledger) -> dict[str, Any]:
    local_all = [f for f in ledger.failures if f.backend == "local"]
    remote = [f for f in ledger.failures if f.backend == "remote"]
    return {
        "local": [asdict(f) for f in local_all if not f.backend_5xx],
        "local_backend_5xx": [asdict(f) for f in local_all if f.backend_5xx],
        "remote_unexplained": [asdict(f) for f in remote if not f.explained],
        "remote_explained": Counter(f"{f.explained}: {f.what}" for f in remote if f.explained),
        "remote_explained_samples": [asdict(f) for f in remote if f.explained][:20],
    }


def verdict(
    ledger: Ledger, args: argparse.Namespace, sections: list[Section], extra: dict[str, Any]
) -> dict[str, Any]:
    """The whole report: ``ok`` only if every check passed."""
    explain(ledger, args.grace, extra.get("kernels_failed_to_start"))
    checks = {**backend_checks(ledger, args), **work_checks(ledger)}
    for section in sections:
        checks.update(section.checks)
    checks.update(end_checks(extra))
    report: dict[str, Any] = {
        "ok": all(passed for passed, _ in checks.values()),
        "checks": {name: {"ok": passed, "detail": detail} for name, (passed, detail) in checks.items()},
        "tally": {b: asdict(t) for b, t in ledger.tally.items()},
        "switches": dict(ledger.switches),
        "execute_latency_ms": {b: percentiles(v) for b, v in ledger.latency.items()},
        "windows": [asdict(w) for w in ledger.windows],
        "grace_seconds": args.grace,
        "failures": failures_report(ledger),
        "all_failures": [asdict(f) for f in ledger.failures],
    }
    for section in sections:
        report.update(section.data)
    return {**report, **extra}


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max of durations in seconds, as milliseconds."""
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": round(1000 * ordered[-1], 1)}
