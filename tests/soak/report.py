"""What the soak says: progress lines on stderr, the JSON report and its text summary."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def log(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


def save_report(report: dict[str, Any], workdir: Path, copy_to: Path | None) -> None:
    """``failures.jsonl`` (every failed operation) and ``soak-report.json`` (the rest)
    in ``workdir``; the JSON report also at ``copy_to``."""
    with open(workdir / "failures.jsonl", "w") as f:
        for failure in report.pop("all_failures"):
            f.write(json.dumps(failure) + "\n")
    text = json.dumps(report, indent=2, default=str)
    (workdir / "soak-report.json").write_text(text)
    if copy_to:
        copy_to.write_text(text)


def print_report(report: dict[str, Any], out: Callable[[str], None] = print) -> None:
    out(f"soak of {report['duration']:.0f}s: {'PASS' if report['ok'] else 'FAIL'}")
    for name, check in report["checks"].items():
        detail = f" — {check['detail']}" if check["detail"] else ""
        out(f"  [{'ok' if check['ok'] else 'FAIL'}] {name}{detail}")
    for backend, t in report["tally"].items():
        out(
            f"  {backend}: execute requests {t['execute_requests']}, replies {t['execute_replies']}, "
            f"lost {t['lost']}, misrouted {t['misrouted']}, kernels started {t['kernels_started']}/"
            f"stopped {t['kernels_stopped']}, websockets {t['websockets_opened']}, "
            f"operations {t['operations']}"
        )
    out(f"  session switches: {report['switches']}")
    out(f"  execute round trip (ms): {report['execute_latency_ms']}")
    windows = ", ".join(
        f"{w['down']:.1f}-{w['up'] if w['up'] is None else round(w['up'], 1)}s" for w in report["windows"]
    )
    out(f"  remote down windows: {windows or 'none'} (grace {report['grace_seconds']}s)")
    _print_failures(report["failures"], out)
    out(f"  mixer RSS: {report['rss'].get('text')}")
    out(f"  mixer fds: {report['fds']}")
    out(f"  mixer maps: {report['maps']['text']}")
    out(f"  behind the mixer's back: {report['maps']['churn_behind_the_back']}")
    out(f"  jupyter_server 'Uncaught exception' log entries: {report['backend_uncaught_exceptions']}")
    out(f"  cleanup: {report['cleanup']}; logs and report in {report['workdir']}")


def _print_failures(failures: dict[str, Any], out: Callable[[str], None]) -> None:
    explained = failures["remote_explained"]
    out(f"  remote failures explained: {sum(explained.values())} {dict(explained)}")
    for title, key in (
        ("local failures", "local"),
        ("local failures from the local jupyter_server's own 5xx (not counted)", "local_backend_5xx"),
        ("remote failures outside the windows", "remote_unexplained"),
    ):
        items = failures[key]
        if items:
            out(f"  {title}: {len(items)}")
            for f in items[:15]:
                out(f"    {f['t0']:.1f}-{f['t1']:.1f}s {f['worker']} {f['what']}: {f['detail']}")
