"""What the fuzzer checks in every answer of the mixer, and the record it keeps.

The mixer marks where an answer comes from (SPEC, issue 5): a backend's own answer
passed through carries ``X-Mixer-Backend: <name>``, an error the mixer made itself
carries ``X-Mixer-Error: mixer`` and a JSON ``{"message", "reason"}`` body. An answer
with neither (the merged lists) is the mixer's own too.

Rules (a broken rule is a *violation*; it fails the fuzz case that broke it):

* no 5xx, made by the mixer or a backend's passed through (the mixer checks what a
  backend would answer with a 500, such as a null ``kernel``);
* a 2xx answer matches jupyter_server's api.yaml;
* no Python traceback or internal detail (file paths, module names, object reprs) in
  a body made by the mixer (one passed through from a backend is listed, not failed:
  the mixer hands the backend's answer on unchanged, SPEC §4);
* an error the mixer made is JSON with a string ``message`` and a ``reason``;
* every kernel model the mixer returns names a prefixed kernelspec;
* every request gets an answer (no reset connection, no timeout), the mixer logs no
  traceback and stays alive.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

BACKEND_HEADER = "x-mixer-backend"
ERROR_HEADER = "x-mixer-error"

LEAK_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("traceback", re.compile(r"Traceback \(most recent call last\)")),
    ("stack frame", re.compile(r'File "[^"\n]*"')),
    ("python source path", re.compile(r"(?:/[\w.+-]+)+\.py\b")),
    ("installed-package path", re.compile(r"\b(?:site|dist)-packages\b")),
    ("mixer module name", re.compile(r"\bnotebook_kernels_mixer\b")),
    ("library module name", re.compile(r"\b(?:aiohttp|asyncio|yarl|multidict|orjson|json)\.[a-z_]\w*")),
    ("object repr", re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")),
    ("class repr", re.compile(r"<class '[\w.]+'>")),
    ("exception repr", re.compile(r"\b\w+(?:Error|Exception)\((?:'|\")")),
)


def header(headers: Any, name: str) -> str | None:
    """One header of a schemathesis response (lower-case keys, list values)."""
    value = headers.get(name) if headers is not None else None
    if isinstance(value, list):
        return value[0] if value else None
    return value


def origin_of(headers: Any) -> str:
    """``"mixer"`` or ``"backend:<name>"``."""
    backend = header(headers, BACKEND_HEADER)
    if backend and not header(headers, ERROR_HEADER):
        return f"backend:{backend}"
    return "mixer"


def leaks(body: str, request_text: str) -> list[str]:
    """Internal details found in ``body`` that the request did not itself contain."""
    found = []
    for what, pattern in LEAK_PATTERNS:
        for m in pattern.finditer(body):
            if m.group(0) not in request_text:
                found.append(f"{what}: {m.group(0)!r}")
                break
    return found


def _kernel_models(operation: str, model: Any) -> list[Any]:
    """The kernel models inside a 2xx answer of ``operation`` (a kernel or session call)."""
    op = operation.partition(" ")[2]
    if re.match(r"^/api/kernels(/|$)", op) and not op.endswith("/interrupt"):
        return model if isinstance(model, list) else [model]
    if re.match(r"^/api/sessions(/|$)", op):
        sessions = model if isinstance(model, list) else [model]
        return [s.get("kernel") for s in sessions if isinstance(s, dict) and s.get("kernel") is not None]
    return []


def naming_problems(
    operation: str, status: int, model: Any, prefixes: tuple[str, ...] = ("local-", "remote-")
) -> list[str]:
    """SPEC §3: every kernel model the mixer returns names a prefixed kernelspec."""
    if not 200 <= status < 300 or model is None:
        return []
    problems = []
    for kernel in _kernel_models(operation, model):
        name = kernel.get("name") if isinstance(kernel, dict) else None
        if not (isinstance(name, str) and name.startswith(prefixes)):
            problems.append(f"kernel model {json.dumps(kernel)[:300]}")
    return problems


def request_text(url: str, body: Any) -> str:
    """Everything the client sent that an answer may legitimately echo."""
    parts = [url, unquote(url)]
    if body is not None:
        parts.append(repr(body))
        with contextlib.suppress(TypeError, ValueError):
            parts.append(json.dumps(body, ensure_ascii=False))
    return "\n".join(parts)


@dataclass
class Finding:
    kind: str
    operation: str
    status: int | None
    origin: str
    detail: str
    reproduce: str

    def __str__(self) -> str:
        return (
            f"[{self.kind}] {self.operation} -> {self.status} ({self.origin}): {self.detail}\n"
            f"    reproduce: {self.reproduce}"
        )


@dataclass
class Record:
    seed: int
    calls: int = 0
    outcomes: Counter = field(default_factory=Counter)  # (operation, method sent, status, origin)
    steered: Counter = field(default_factory=Counter)  # how cases were pointed at real objects
    violations: list[Finding] = field(default_factory=list)  # each failed its case
    backend_leaks: list[Finding] = field(default_factory=list)  # reported, not failed

    def successes(self, operation: str, origin: str | None = None) -> int:
        return sum(
            n for (op, method, status, org), n in self.outcomes.items()
            if op == operation and op.startswith(method + " ") and 200 <= status < 300
            and (origin is None or org == origin)
        )  # fmt: skip

    def summary(self) -> str:
        lines = [f"API fuzzing: {self.calls} requests, schemathesis seed {self.seed}"]
        by_op: dict[str, Counter] = {}
        for (op, method, status, origin), n in sorted(self.outcomes.items()):
            sent = "" if op.startswith(method + " ") else f" as {method}"
            by_op.setdefault(op, Counter())[f"{status} {origin}{sent}"] += n
        for op, counts in by_op.items():
            shown = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
            lines.append(f"  {op}: {shown}")
        if self.steered:
            lines.append(
                "  steered at real objects: "
                + ", ".join(f"{k}: {v}" for k, v in sorted(self.steered.items()))
            )
        for title, findings in (
            ("violations (each failed its case)", self.violations),
            ("internal detail in backend bodies passed through (allowed)", self.backend_leaks),
        ):
            lines.append(f"  {title}: {len(findings)}")
            lines.extend("    " + str(f).replace("\n", "\n    ") for f in findings[:20])
        return "\n".join(lines)
