"""``mixer status``: a running mixer's ``/mixer/api/status`` as a terminal table;
``--kernels`` lists every kernel, ``--shutdown-orphans [BACKEND]`` stops the orphan
kernels (no session, no client connected) of one backend or of all.

Exit status: 0 when every backend is reachable (``--shutdown-orphans``: when every
orphan asked for was stopped or had gone), 1 when some backend is not (could not
say which kernels are orphans, or failed to stop one), 2 when the mixer itself
cannot be asked (not running, wrong token, not a mixer) or the request is wrong
(a backend the mixer does not have).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from notebook_kernels_mixer.processes import http_get

DEFAULT_URL = "http://127.0.0.1:8081/"
#: Every request goes straight to the mixer (it listens on loopback only), no proxy.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ALL_BACKENDS = ""


class Refused(Exception):
    """The mixer refused the request (4xx), with its message."""


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
    p.add_argument("--json", action="store_true", help="print the API's JSON as is")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--kernels", action="store_true",
                      help="list every kernel: backend, spec, state, connections, how long the "
                           "mixer has seen it, last activity, whether it is an orphan")
    what.add_argument("--shutdown-orphans", nargs="?", const=ALL_BACKENDS, default=None,
                      metavar="BACKEND",
                      help="shut down the orphan kernels (no session, no client connected) of "
                           "BACKEND, or of every backend; prints what it stopped")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the mixer's answer (default 10)")
    return p


def fetch(url: str, token: str | None, timeout: float, path: str = "/mixer/api/status"
          ) -> dict[str, Any]:
    target = url.rstrip("/") + path
    headers = {"Accept": "application/json"}
    if token:
        headers["token"] = token
    # No proxy: the mixer listens on loopback only.
    answer: dict[str, Any] = json.loads(http_get(target, headers, timeout).decode("utf-8"))
    return answer


def post(url: str, token: str | None, timeout: float, path: str, body: dict[str, Any]
         ) -> dict[str, Any]:
    """POST ``body`` as JSON; the answer's JSON. A 4xx with a message is ``Refused``."""
    xsrf = uuid.uuid4().hex  # the pair a mixer without a token asks of a POST
    headers = {"Accept": "application/json", "Content-Type": "application/json",
               "Cookie": f"_xsrf={xsrf}", "X-XSRFToken": xsrf}
    if token:
        headers["token"] = token
    request = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    try:
        with _NO_PROXY.open(request, timeout=timeout) as resp:
            answer: dict[str, Any] = json.loads(resp.read().decode("utf-8"))
            return answer
    except urllib.error.HTTPError as exc:
        if exc.code in (400, 404):
            try:
                message = json.loads(exc.read().decode("utf-8")).get("message")
            except (ValueError, AttributeError, OSError):
                message = None
            if isinstance(message, str):
                raise Refused(message) from None
        raise


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
            _hours(b.get("kernel_hours")),
            _stale(b.get("stale_since")),
            _ms(b.get("last_latency_ms")),
            cred_text,
        ])
    return out


def _hours(value: Any) -> str:
    """Kernel-hours since the mixer started (a mixer without them: "?")."""
    return f"{value:.2f}" if isinstance(value, (int, float)) else "?"


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
    header = ["BACKEND", "ROLE", "URL", "REACHABLE", "KERNELS", "KERNEL-HOURS", "LAST-KNOWN",
              "LATENCY", "CREDENTIALS"]
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


def kernel_lines(answer: dict[str, Any]) -> list[str]:
    """Every kernel of every backend, as a table."""
    header = ["BACKEND", "KERNEL", "SPEC", "STATE", "CONNECTIONS", "AGE", "LAST ACTIVITY",
              "ORPHAN"]
    table = [header]
    for k in answer.get("kernels", []):
        orphan = k.get("orphan")
        table.append([
            str(k.get("backend")), str(k.get("id")), str(k.get("name") or "?"),
            str(k.get("execution_state") or "?") + (" (last known)" if k.get("last_known") else ""),
            str(k.get("connections", "?")),
            _duration(k.get("seen_for_seconds")),
            _ago(k.get("last_activity")),
            "?" if orphan is None else "yes" if orphan else "no",
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in table]
    if len(table) == 1:
        lines = ["no kernels"]
    for name, error in sorted((answer.get("unavailable") or {}).items()):
        lines.append(f"{name}: cannot list its kernels now: {error}")
    return lines


def _ago(value: Any) -> str:
    """``last_activity`` (ISO 8601) as "3m05s ago"; the raw value if unreadable."""
    if not isinstance(value, str) or not value:
        return "?"
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return f"{_duration(max(time.time() - moment.timestamp(), 0))} ago"


def shutdown_lines(answer: dict[str, Any]) -> tuple[list[str], bool]:
    """What ``--shutdown-orphans`` did, and whether all of it went well."""
    lines, ok = [], True
    for b in answer.get("backends", []):
        name = b.get("backend")
        if b.get("unavailable"):
            ok = False
            lines.append(f"{name}: {b['unavailable']}")
            continue
        stopped = b.get("stopped") or []
        lines.append(f"{name}: stopped {len(stopped)} orphan kernel{'s' * (len(stopped) != 1)}"
                     + (": " + ", ".join(stopped) if stopped else ""))
        for kept in b.get("kept") or []:
            lines.append(f"{name}: kept {kept.get('id')} ({kept.get('why')})")
        for failed in b.get("failed") or []:
            ok = False
            lines.append(f"{name}: could not stop {failed.get('id')}: {failed.get('error')}")
    return lines, ok


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
        if args.kernels:
            kernels = fetch(args.url, token, args.timeout, "/mixer/api/kernels")
            print(json.dumps(kernels, indent=2) if args.json else "\n".join(kernel_lines(kernels)))
            return 0
        if args.shutdown_orphans is not None:
            body = {"backend": args.shutdown_orphans} if args.shutdown_orphans else {}
            done = post(args.url, token, args.timeout, "/mixer/api/orphans/shutdown", body)
            lines, ok = shutdown_lines(done)
            print(json.dumps(done, indent=2) if args.json else "\n".join(lines))
            return 0 if ok else 1
        status = fetch(args.url, token, args.timeout)
    except Refused as exc:
        print(f"mixer status: {exc}", file=sys.stderr)
        return 2
    except urllib.error.HTTPError as exc:
        hint = " (wrong or missing --token?)" if exc.code == 403 else ""
        print(f"mixer status: {args.url} answered HTTP {exc.code}{hint}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"mixer status: cannot reach a mixer at {args.url}: {reason}", file=sys.stderr)
        return 2
    except (ValueError, AttributeError, TypeError):
        print(f"mixer status: {args.url} did not answer with the mixer's status JSON",
              file=sys.stderr)
        return 2
    if not isinstance(status, dict) or not isinstance(status.get("backends"), list):
        print(f"mixer status: {args.url} did not answer with the mixer's status JSON",
              file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if args.json else render(status, args.url))
    return 0 if all(b.get("reachable") for b in status["backends"]) else 1
