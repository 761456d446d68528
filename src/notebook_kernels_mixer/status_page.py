"""The ``/mixer/`` page: the status of ``status.py`` as a small HTML table."""

from __future__ import annotations

import html
import time
from typing import Any


def _since(epoch: float) -> str:
    seconds = max(int(time.time() - epoch), 0)
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60} min ago"


def render_row(b: dict[str, Any]) -> str:
    cred = b["credentials"]
    cred_text = cred["kind"] + ("" if cred.get("ok", True) else f" — {cred.get('error')}")
    stale = b.get("stale_since") or {}
    stale_text = ", ".join(f"{what} since {_since(at)}" for what, at in sorted(stale.items()))
    cells = [
        b["name"] + (" (default)" if b["default"] else ""),
        b["url"],
        "yes" if b["reachable"] else "no",
        "–" if b["kernels"] is None else str(b["kernels"]),
        stale_text or "–",
        "–" if b["last_latency_ms"] is None else f"{b['last_latency_ms']} ms",
        cred_text,
        b["last_error"] or "",
    ]
    cls = "up" if b["reachable"] else "down"
    return f'<tr class="{cls}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def render_orphans(backends: list[dict[str, Any]]) -> str:
    rows = [
        (b["name"], o) for b in backends for o in b.get("orphans") or []
    ]
    if not rows:
        return "<p>No orphan kernels: every kernel has a session or a connected client.</p>"
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            name, o["id"], o.get("name") or "", o.get("execution_state") or "",
            "–" if o.get("seen_for_seconds") is None else f"{o['seen_for_seconds']} s",
            o.get("last_activity") or "")) + "</tr>"
        for name, o in rows
    )
    return ("<h2>Orphan kernels</h2><p>Running, with no session and no client connected "
            "(e.g. left behind by a crashed client):</p><table><tr><th>backend</th><th>kernel</th>"
            "<th>spec</th><th>state</th><th>seen for</th><th>last activity</th></tr>"
            f"{cells}</table>")


def render_page(status: dict[str, Any]) -> str:
    return PAGE.format(
        version=html.escape(status["version"]),
        websockets=status["websockets"],
        rows="".join(render_row(b) for b in status["backends"]),
        orphans=render_orphans(status["backends"]),
        state=render_state(status.get("state") or {}),
    )


def render_state(state: dict[str, Any]) -> str:
    """A warning while changes do not reach the state file (e.g. a full disk)."""
    if not state.get("problem"):
        return ""
    return (f'<p class="problem">The state file {html.escape(str(state.get("path")))} is not being'
            f" written: {html.escape(str(state['problem']))}. Kept sessions created meanwhile"
            " are refused.</p>")


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Notebook Kernels Mixer</title>
<meta http-equiv="refresh" content="5">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .3em .8em; border-bottom: 1px solid #ddd; }}
tr.down td, .problem {{ color: #a00; }} th {{ text-align: left; }}
</style></head>
<body><h1>Notebook Kernels Mixer</h1>
<p>Version {version} · {websockets} kernel websockets relayed now · refreshes every 5 s</p>
{state}
<table><tr><th>backend</th><th>url</th><th>reachable</th><th>kernels</th>
<th>last-known entries</th><th>last latency</th><th>credentials</th><th>last error</th></tr>
{rows}</table>
{orphans}
</body></html>
"""
