"""``mixer status``: a running mixer's ``/mixer/api/status`` as a terminal table.

Exit status: 0 when every backend is reachable, 1 when some backend is not, 2 when
the mixer itself cannot be asked (not running, wrong token, not a mixer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
from collections.abc import Sequence
from typing import Any

from notebook_kernels_mixer.processes import http_get

DEFAULT_URL = "http://127.0.0.1:8081/"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mixer status",
        description="Show how each backend of a running mixer is doing: reachability, "
                    "kernels, latency of the last call, credential state, last error.",
    )
    p.add_argument("--url", default=os.environ.get("MIXER_URL", DEFAULT_URL),
                   help=f"the mixer's URL (env MIXER_URL; default {DEFAULT_URL})")
    p.add_argument("--token", default=None,
                   help="the token clients present to the mixer (the local Jupyter token); "
                        "default: env MIXER_TOKEN, then JUPYTER_TOKEN")
    p.add_argument("--json", action="store_true", help="print the status API's JSON as is")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the mixer's answer (default 10)")
    return p


def fetch(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    target = url.rstrip("/") + "/mixer/api/status"
    headers = {"Accept": "application/json"}
    if token:
        headers["token"] = token
    # No proxy: the mixer listens on loopback only.
    answer: dict[str, Any] = json.loads(http_get(target, headers, timeout).decode("utf-8"))
    return answer


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value:g} ms"


def rows(status: dict[str, Any]) -> list[list[str]]:
    out = []
    for b in status.get("backends", []):
        roles = [r for r in ("default", "local") if b.get(r)]
        cred = b.get("credentials") or {}
        cred_text = str(cred.get("kind", "?"))
        if not cred.get("ok", True):
            cred_text += " (failing)"
        elif isinstance(cred.get("expires_in"), (int, float)):
            cred_text += f" (expires in {cred['expires_in']:.0f}s)"
        out.append([
            str(b.get("name")),
            ",".join(roles) or "-",
            str(b.get("url")),
            "yes" if b.get("reachable") else "NO",
            "–" if b.get("kernels") is None else str(b["kernels"]),
            _stale(b.get("stale_since")),
            _ms(b.get("last_latency_ms")),
            cred_text,
        ])
    return out


def _stale(since: Any) -> str:
    """'kernels, sessions 42s': listings served from last-known entries, for how long."""
    if not isinstance(since, dict) or not since:
        return "–"
    oldest = min(v for v in since.values() if isinstance(v, (int, float)))
    return f"{', '.join(sorted(since))} {_duration(time.time() - oldest)}"


def orphan_lines(status: dict[str, Any]) -> list[str]:
    """Kernels no session references and no client is connected to: still running
    (and in a cloud, still paid for)."""
    found = [(b.get("name"), o) for b in status.get("backends", []) for o in b.get("orphans") or []]
    if not found:
        return []
    lines = ["", "orphan kernels (no session, no client connected):"]
    for name, o in found:
        lines.append(
            f"  {name}: {o.get('id')} {o.get('name') or ''} {o.get('execution_state') or ''}"
            f" seen for {_duration(o.get('seen_for_seconds'))},"
            f" last activity {o.get('last_activity') or '?'}"
        )
    return lines


def render(status: dict[str, Any], url: str) -> str:
    header = ["BACKEND", "ROLE", "URL", "REACHABLE", "KERNELS", "LAST-KNOWN", "LATENCY",
              "CREDENTIALS"]
    table = [header, *rows(status)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        f"mixer {status.get('version', '?')} at {url.rstrip('/')}: up "
        f"{_duration(status.get('uptime_seconds'))}, {status.get('websockets', 0)} kernel "
        "websockets relayed now",
        "",
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
              for row in table]
    lines += orphan_lines(status)
    errors = [(b.get("name"), b.get("last_error")) for b in status.get("backends", [])
              if b.get("last_error")]
    if errors:
        lines += ["", "last errors:"]
        lines += [f"  {name}: {error}" for name, error in errors]
    lines += state_lines(status.get("state"))
    return "\n".join(lines)


def state_lines(state: Any) -> list[str]:
    """The state file's trouble, if any: changes that do not reach it now, or did not."""
    if not isinstance(state, dict) or not (state.get("problem") or state.get("dropped_changes")):
        return []
    lines = ["", f"state file {state.get('path')}: {state.get('problem') or 'written again'}"]
    if state.get("dropped_changes"):
        lines.append(f"  {state['dropped_changes']} changes could not be kept; last error:"
                     f" {state.get('last_error')}")
    return lines


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    token = args.token or os.environ.get("MIXER_TOKEN") or os.environ.get("JUPYTER_TOKEN")
    try:
        status = fetch(args.url, token, args.timeout)
    except urllib.error.HTTPError as exc:
        hint = " (wrong or missing --token?)" if exc.code == 403 else ""
        print(f"mixer status: {args.url} answered HTTP {exc.code}{hint}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"mixer status: cannot reach a mixer at {args.url}: {reason}", file=sys.stderr)
        return 2
    except ValueError:
        print(f"mixer status: {args.url} did not answer with the mixer's status JSON",
              file=sys.stderr)
        return 2
    if not isinstance(status, dict) or not isinstance(status.get("backends"), list):
        print(f"mixer status: {args.url} did not answer with the mixer's status JSON",
              file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if args.json else render(status, args.url))
    return 0 if all(b.get("reachable") for b in status["backends"]) else 1
