"""The ``/mixer/`` page: the status of ``status.py`` as a small HTML table, with a
"Shut down" button per orphan kernel and one per backend for all its orphans.

The page is served like every request: with the token (``/mixer/?token=…``). Its
script sends that token back (``Authorization: token …``) with the shutdown POST,
after a confirmation; without a configured token it sends the ``_xsrf`` pair
instead. The script is the only one the page may run (its hash in the
Content-Security-Policy), the page may not be framed (a button in a frame could be
clicked by a page the user did not mean to use), and it sends no Referer (its URL
holds the token).
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from typing import Any


def _since(epoch: float) -> str:
    seconds = max(int(time.time() - epoch), 0)
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60} min ago"


def _culling(policy: dict[str, Any] | None) -> str:
    if not policy:
        return "off"
    text = f"idle > {policy['idle_timeout']:g}s, every {policy['interval']:g}s"
    extras = [word for word, on in (("busy", policy.get("busy")),
                                    ("connected", policy.get("connected"))) if on]
    return text + (f" (also {', '.join(extras)})" if extras else "")


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
        f"{b.get('kernel_hours') or 0:.2f}",
        _culling(b.get("culling")) + (f"; {b['culled']} culled" if b.get("culled") else ""),
        stale_text or "–",
        "–" if b["last_latency_ms"] is None else f"{b['last_latency_ms']} ms",
        cred_text,
        b["last_error"] or "",
    ]
    cls = "up" if b["reachable"] else "down"
    return f'<tr class="{cls}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _button(backend: str, ids: list[str], what: str, label: str) -> str:
    attrs = {"data-backend": backend, "data-ids": " ".join(ids), "data-what": what}
    rendered = " ".join(f'{k}="{html.escape(v, quote=True)}"' for k, v in attrs.items())
    return f'<button type="button" class="shutdown" {rendered}>{html.escape(label)}</button>'


def render_orphans(backends: list[dict[str, Any]]) -> str:
    rows = [
        (b["name"], o) for b in backends for o in b.get("orphans") or []
    ]
    if not rows:
        return "<p>No orphan kernels: every kernel has a session or a connected client.</p>"
    cells = "".join(
        f'<tr class="orphan" data-id="{html.escape(o["id"], quote=True)}">'
        + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            name, o["id"], o.get("name") or "", o.get("execution_state") or "",
            "–" if o.get("seen_for_seconds") is None else f"{o['seen_for_seconds']} s",
            o.get("last_activity") or ""))
        + "<td>" + _button(name, [o["id"]], f"kernel {o['id']} ({o.get('name') or '?'})",
                           "Shut down") + "</td></tr>"
        for name, o in rows
    )
    every = []
    for b in backends:
        ids = [o["id"] for o in b.get("orphans") or []]
        if ids:
            plural = "s" if len(ids) != 1 else ""
            every.append(_button(b["name"], ids, f"the {len(ids)} orphan kernel{plural}",
                                 f"Shut down the {len(ids)} orphan{plural} of {b['name']}"))
    return ("<h2>Orphan kernels</h2><p>Running, with no session and no client connected "
            "(e.g. left behind by a crashed client):</p><table><tr><th>backend</th><th>kernel</th>"
            "<th>spec</th><th>state</th><th>seen for</th><th>last activity</th><th></th></tr>"
            f"{cells}</table><p>{' '.join(every)}</p>")


def render_page(status: dict[str, Any]) -> str:
    return PAGE.format(
        version=html.escape(status["version"]),
        websockets=status["websockets"],
        rows="".join(render_row(b) for b in status["backends"]),
        orphans=render_orphans(status["backends"]),
        state=render_state(status.get("state") or {}),
        script=SCRIPT,
    )


def render_state(state: dict[str, Any]) -> str:
    """A warning while changes do not reach the state file (e.g. a full disk)."""
    if not state.get("problem"):
        return ""
    return (f'<p class="problem">The state file {html.escape(str(state.get("path")))} is not being'
            f" written: {html.escape(str(state['problem']))}. Kept sessions created meanwhile"
            " are refused.</p>")


#: The page's one script: a refresh every 5 s (paused while a shutdown is asked),
#: and the shutdown buttons.
SCRIPT = """
(() => {
  const token = new URLSearchParams(location.search).get("token");
  const outcome = document.getElementById("outcome");
  let refresh = null;
  const later = () => { refresh = setTimeout(() => location.reload(), 5000); };
  const said = sessionStorage.getItem("mixer-outcome");
  if (said) { outcome.textContent = said; sessionStorage.removeItem("mixer-outcome"); }
  later();
  function xsrf() {
    const found = document.cookie.split("; ").filter(c => c.startsWith("_xsrf="));
    if (found.length) return found[found.length - 1].slice(6);
    const value = Array.from(crypto.getRandomValues(new Uint8Array(16)),
                             b => b.toString(16).padStart(2, "0")).join("");
    document.cookie = "_xsrf=" + value + "; path=/mixer; SameSite=Strict";
    return value;
  }
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button.shutdown");
    if (!button) return;
    clearTimeout(refresh);
    const backend = button.dataset.backend;
    const ids = button.dataset.ids.split(" ").filter(Boolean);
    if (!confirm("Shut down " + button.dataset.what + " on backend " + backend +
                 "? What they hold in memory is lost.")) { later(); return; }
    const headers = {"Content-Type": "application/json"};
    if (token) headers["Authorization"] = "token " + token;
    else headers["X-XSRFToken"] = xsrf();
    button.disabled = true;
    let text;
    try {
      const r = await fetch("/mixer/api/orphans/shutdown", {
        method: "POST", headers, credentials: "same-origin", cache: "no-store",
        body: JSON.stringify({backend, ids}),
      });
      const answer = await r.json().catch(() => ({}));
      if (!r.ok) {
        text = "Refused (HTTP " + r.status + "): " + (answer.message || "");
      } else {
        const b = answer.backends[0];
        const list = (items, why) => items.map(k => k.id + " (" + k[why] + ")").join(", ");
        text = "Stopped " + b.stopped.length + " kernel(s) on " + backend + "." +
          (b.kept.length ? " Kept " + list(b.kept, "why") + "." : "") +
          (b.failed.length ? " Failed: " + list(b.failed, "error") + "." : "") +
          (b.unavailable ? " " + b.unavailable + "." : "");
      }
    } catch (error) {
      text = "The mixer did not answer: " + error;
    }
    sessionStorage.setItem("mixer-outcome", text);
    location.reload();
  });
})();
"""

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()

#: Headers of the page: nothing but its own script runs, no framing, no Referer.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src 'sha256-{_SCRIPT_HASH}'; style-src 'unsafe-inline'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Notebook Kernels Mixer</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .3em .8em; border-bottom: 1px solid #ddd; }}
tr.down td, .problem {{ color: #a00; }} th {{ text-align: left; }}
#outcome {{ font-weight: bold; }}
</style></head>
<body><h1>Notebook Kernels Mixer</h1>
<p>Version {version} · {websockets} kernel websockets relayed now · refreshes every 5 s</p>
<p id="outcome" role="status"></p>
{state}
<table><tr><th>backend</th><th>url</th><th>reachable</th><th>kernels</th><th>kernel-hours</th>
<th>culling</th><th>last-known entries</th><th>last latency</th><th>credentials</th><th>last error</th></tr>
{rows}</table>
{orphans}
<script>{script}</script>
</body></html>
"""
