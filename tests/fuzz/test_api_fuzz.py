"""API fuzzing of the mixer against Jupyter's own contract (issue 5, item 1).

schemathesis generates requests from jupyter_server's own OpenAPI document
(``jupyter_server/services/api/api.yaml`` of the installed package, Swagger 2.0),
limited to the kernelspecs, kernels and sessions paths, in all its phases that run
under pytest (coverage: boundary and negative cases, unexpected methods; fuzzing:
positive and negative random cases). Every request goes to a real mixer (subprocess)
in front of a real local jupyter_server and a real bearer-only "remote"
jupyter_server, with the token header and a matching ``_xsrf`` cookie/header pair.

Generated kernel names are random, so most kernel and session requests get a 400:
expected. To reach the code behind the validation too, a fixed share of the
generated cases is *steered* at real objects before it is sent: a valid prefixed
spec name (``local-python3``/``remote-python3``) in kernel and session bodies, the id
of a real kernel or session in the path, a kernel of the *other* backend in a
session PATCH (the cross-backend move). The generated rest of the case is kept.
Steering is deterministic (every n-th case of an operation) and budgeted, and the
number of live kernels the fuzzer leaves around is capped, so the run is bounded.

Besides api.yaml's paths, the two kernelspec paths GatewayClient calls and api.yaml
lacks (``/api/kernelspecs/{kernel_name}``, ``/kernelspecs/{kernel_name}/{resource}``)
are added to the document in its own terms.

The answers are checked by ``oracle.py``: no 5xx at all (the mixer's own, or a
backend's passed through: the mixer validates what jupyter_server would answer with a
500), 2xx answers that match api.yaml's schemas, no traceback or internal detail in a
body the mixer made, mixer errors as JSON ``{message, reason}``, kernel models with
prefixed names, an answer to every request, no traceback in the mixer's log and the
mixer alive after each. A finding fails the test case that found it, at once, with the
request as a curl command and the seed (Hypothesis then stops generating for that
operation). Internal detail in a backend's own body passed through is listed in the
report, not failed (the mixer hands backend answers on unchanged, SPEC §4).
``test_mixer_survived_the_fuzzing`` (last in this module) checks that the mixer is
alive and serving afterwards and that the steered requests really succeeded on both
backends. At the end every session and kernel on both backends is deleted. The report
(seed, outcomes per operation, findings with a curl command each) is printed at the
end of the module and written to ``fuzz-report.txt`` in the module's temporary
directory, beside ``fuzz-requests.jsonl`` (every request and answer) and the
processes' logs.

Knobs (environment): ``MIXER_FUZZ_SEED`` (repeat a run: the same seed generates the
same cases; the seed is printed when the module starts and in every failure),
``MIXER_FUZZ_MAX_EXAMPLES`` (fuzzing-phase examples per operation, default 40).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import jupyter_server
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.e2e.support.stack import Stack

from . import oracle

pytestmark = pytest.mark.fuzz

API_YAML = Path(jupyter_server.__file__).parent / "services" / "api" / "api.yaml"
PATHS = r"^(/api/(kernelspecs|kernels|sessions)|/kernelspecs)(/|$)"
SEED = int(os.environ.get("MIXER_FUZZ_SEED") or random.SystemRandom().getrandbits(32))
REPEAT = f"MIXER_FUZZ_SEED={SEED} repeats this run"
MAX_EXAMPLES = int(os.environ.get("MIXER_FUZZ_MAX_EXAMPLES") or 40)

SPECS = {"local": "local-python3", "remote": "remote-python3"}
OTHER = {"local": "remote", "remote": "local"}
BACKENDS = ("local", "remote")
RESOURCES = ("logo-64x64.png", "logo-svg.svg", "logo-32x32.png")
REQUEST_TIMEOUT = 60  # the mixer's own limit per proxied request is 10 s (see topology.mixer)
MAX_LIVE = 6  # kernels/sessions the fuzzer created and keeps alive at once; older ones are deleted
BUDGET = {"restart": 4, "move": 4, "session start": 6}

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
    }
)

# Two kernelspec paths GatewayClient calls (SPEC §1) that api.yaml does not describe;
# added in api.yaml's own terms so that the mixer's spec-name and resource-path
# parsing is fuzzed too.
_SPEC_NAME = {"name": "kernel_name", "in": "path", "required": True, "type": "string"}
EXTRA_PATHS = {
    "/api/kernelspecs/{kernel_name}": {
        "parameters": [_SPEC_NAME],
        "get": {
            "summary": "Get one kernel spec (not in api.yaml; used by GatewayClient)",
            "tags": ["kernelspecs"],
            "responses": {
                "200": {"description": "Kernel spec", "schema": {"$ref": "#/definitions/KernelSpec"}},
                "404": {"description": "No such kernel spec"},
            },
        },
    },
    "/kernelspecs/{kernel_name}/{resource}": {
        "parameters": [_SPEC_NAME, {"name": "resource", "in": "path", "required": True, "type": "string"}],
        "get": {
            "summary": "A kernel spec resource, e.g. its logo (not in api.yaml; used by GatewayClient)",
            "tags": ["kernelspecs"],
            "produces": ["image/png", "image/svg+xml", "application/octet-stream"],
            "responses": {"200": {"description": "The file"}, "404": {"description": "No such file"}},
        },
    },
}


def load_schema() -> schemathesis.BaseSchema:
    raw = yaml.safe_load(API_YAML.read_text())
    raw["paths"].update(EXTRA_PATHS)
    return schemathesis.openapi.from_dict(raw, config=CONFIG).include(path_regex=PATHS)


schema = load_schema()
RECORD = oracle.Record(seed=SEED)


# -- the objects the fuzzer steers cases at ----------------------------------------------------


@dataclass
class Objects:
    """Real kernels and sessions, by owning backend, learnt from the mixer's answers."""

    kernels: dict[str, list[str]] = field(default_factory=lambda: {b: [] for b in BACKENDS})
    disposable: set[str] = field(default_factory=set)  # kernels a steered DELETE may take
    sessions: dict[str, str] = field(default_factory=dict)  # client session id -> backend
    live: deque = field(default_factory=deque)  # ("kernel"|"session", id) created by the fuzzer
    counters: Counter = field(default_factory=Counter)

    def add_kernel(self, kernel_id: str, backend: str, *, disposable: bool) -> None:
        if backend in self.kernels and kernel_id not in self.kernels[backend]:
            self.kernels[backend].append(kernel_id)
            if disposable:
                self.disposable.add(kernel_id)

    def drop_kernel(self, kernel_id: str) -> None:
        for ids in self.kernels.values():
            with contextlib.suppress(ValueError):
                ids.remove(kernel_id)
        self.disposable.discard(kernel_id)

    def pick_kernel(self, n: int, *, disposable: bool = False) -> str | None:
        for backend in (BACKENDS[n % 2], BACKENDS[(n + 1) % 2]):
            ids = [k for k in self.kernels[backend] if not disposable or k in self.disposable]
            if ids:
                return ids[n % len(ids)]
        return None

    def pick_session(self, n: int, backend: str | None = None) -> str | None:
        # in the order the fuzzer learnt them (not by id: ids are random, and the same
        # seed must steer the same way)
        ids = [s for s, b in self.sessions.items() if backend is None or b == backend]
        return ids[n % len(ids)] if ids else None


@dataclass
class Fuzz:
    stack: Stack
    http: requests.Session
    objects: Objects
    log: TextIO  # one JSON line per fuzz request: what was sent, what came back
    mixer_log_seen: int = 0  # bytes of the mixer's log already looked at

    def write_log(self, **entry: object) -> None:
        self.log.write(json.dumps(entry, default=repr, ensure_ascii=True) + "\n")

    def new_mixer_log(self) -> str:
        """What the mixer logged since the last call."""
        with self.stack.mixer.process.log_path.open("rb") as f:
            f.seek(self.mixer_log_seen)
            data = f.read()
        self.mixer_log_seen += len(data)
        return data.decode("utf-8", errors="replace")

    def backend_request(self, backend: str, method: str, path: str) -> requests.Response:
        server = self.stack.local if backend == "local" else self.stack.remote
        return self.http.request(method, server.url + path, headers=server.auth(), timeout=REQUEST_TIMEOUT)

    def mixer_request(self, method: str, path: str, body: object = None) -> requests.Response:
        return self.http.request(
            method,
            self.stack.mixer.url + path,
            headers=self.stack.mixer_headers(),
            data=json.dumps(body) if body is not None else None,
            timeout=REQUEST_TIMEOUT,
        )

    def cap_live(self) -> None:
        """Delete the oldest objects the fuzzer created beyond ``MAX_LIVE`` (bounded CPU)."""
        while len(self.objects.live) > MAX_LIVE:
            kind, ident = self.objects.live.popleft()
            with contextlib.suppress(requests.RequestException):
                if kind == "session":
                    self.objects.sessions.pop(ident, None)
                    self.mixer_request("DELETE", f"/api/sessions/{ident}")
                else:
                    for backend, ids in self.objects.kernels.items():
                        if ident in ids:
                            self.backend_request(backend, "DELETE", f"/api/kernels/{ident}")
                    self.objects.drop_kernel(ident)


def _json(resp_content: bytes) -> object:
    try:
        return json.loads(resp_content)
    except ValueError:
        return None


@pytest.fixture(scope="module")
def fuzz(stack: Stack) -> Iterator[Fuzz]:
    print(f"API fuzzing: schemathesis seed {SEED} ({REPEAT})")  # and in the terminal summary
    http = requests.Session()
    http.trust_env = False  # loopback only, whatever proxy the environment names
    log = (stack.workdir / "fuzz-requests.jsonl").open("w")
    f = Fuzz(stack, http, Objects(), log)
    try:
        _seed_objects(f)
        f.new_mixer_log()  # its start-up is not the fuzzer's business
        yield f
    finally:
        try:
            _delete_everything(f)
        finally:
            http.close()
            log.close()
            summary = RECORD.summary()
            (stack.workdir / "fuzz-report.txt").write_text(summary + "\n")
            print("\n" + summary)


def _seed_objects(f: Fuzz) -> None:
    """One kernel and one session on each backend, made with valid requests."""
    for backend in BACKENDS:
        resp = f.mixer_request("POST", "/api/kernels", {"name": SPECS[backend]})
        assert resp.status_code == 201, f"seed kernel on {backend}: {resp.status_code} {resp.text[:500]}"
        f.objects.add_kernel(resp.json()["id"], backend, disposable=False)
        body = {
            "path": f"seed-{backend}.ipynb",
            "type": "notebook",
            "name": "",
            "kernel": {"name": SPECS[backend]},
        }
        resp = f.mixer_request("POST", "/api/sessions", body)
        assert resp.status_code == 201, f"seed session on {backend}: {resp.status_code} {resp.text[:500]}"
        f.objects.sessions[resp.json()["id"]] = backend


def _delete_everything(f: Fuzz, timeout: float = 60) -> None:
    """Every session and kernel on both backends, straight at the backends."""
    for backend in BACKENDS:
        deadline = time.monotonic() + timeout
        for _ in range(20):
            sessions = f.backend_request(backend, "GET", "/api/sessions").json()
            kernels = f.backend_request(backend, "GET", "/api/kernels").json()
            if not sessions and not kernels:
                break
            assert time.monotonic() < deadline, f"{backend} still has {sessions} {kernels}"
            for s in sessions:
                f.backend_request(backend, "DELETE", f"/api/sessions/{s['id']}")
            for k in kernels:
                f.backend_request(backend, "DELETE", f"/api/kernels/{k['id']}")


# -- steering ----------------------------------------------------------------------------------


def _steer(case: schemathesis.Case, objs: Objects) -> str | None:
    """Point a deterministic share of the cases at real objects; say what was done."""
    op = case.operation.label
    if case.method.upper() != case.operation.method.upper():
        return None  # an "unexpected method" case of the coverage phase: leave it alone
    n = objs.counters[op]
    objs.counters[op] += 1
    body = case.body if isinstance(case.body, dict) else None
    params = case.path_parameters if isinstance(case.path_parameters, dict) else None

    if op == "POST /api/kernels" and body is not None and n % 3 == 0:
        backend = BACKENDS[(n // 3) % 2]
        body["name"] = SPECS[backend]
        return f"kernel start on {backend}"

    if op == "POST /api/sessions" and body is not None and n % 3 == 0:
        if objs.counters["session start"] >= BUDGET["session start"]:
            return None
        objs.counters["session start"] += 1
        backend = BACKENDS[(n // 3) % 2]
        kernel = body.get("kernel") if isinstance(body.get("kernel"), dict) else {}
        kernel = {k: v for k, v in kernel.items() if k != "id"}
        body["kernel"] = {**kernel, "name": SPECS[backend]}
        if n % 6 == 0:  # and a complete model: path and type are required by jupyter_server
            body["path"] = f"fuzz-{n}.ipynb"
            body["type"] = "notebook"
        return f"session start on {backend}"

    if params is None:
        return None

    if "kernel_name" in params and n % 2 == 0:
        m = n // 2  # local+resource, local, remote+resource, remote, ...
        params["kernel_name"] = SPECS[BACKENDS[(m // 2) % 2]]
        if "resource" in params and m % 2 == 0:
            params["resource"] = RESOURCES[(m // 4) % len(RESOURCES)]
        return "real kernelspec"

    if "kernel_id" in params and n % 2 == 0:
        if op.startswith("DELETE"):
            kernel_id = objs.pick_kernel(n // 2, disposable=True)
        elif op.endswith("/restart"):
            if objs.counters["restart"] >= BUDGET["restart"]:
                return None
            objs.counters["restart"] += 1
            kernel_id = objs.pick_kernel(n // 2)
        else:
            kernel_id = objs.pick_kernel(n // 2)
        if kernel_id is None:
            return None
        params["kernel_id"] = kernel_id
        return "real kernel id"

    if "session" in params and n % 2 == 0:
        session_id = objs.pick_session(n // 2)
        if session_id is None:
            return None
        params["session"] = session_id
        moving = op.startswith("PATCH") and body is not None and n % 4 == 0
        if moving and objs.counters["move"] < BUDGET["move"]:
            objs.counters["move"] += 1
            target = OTHER[objs.sessions[session_id]]
            body.pop("id", None)
            body["kernel"] = {"name": SPECS[target]}
            if objs.counters["move"] % 2:  # half of them with a clean model, the rest as generated
                for key in ("path", "name", "type"):
                    if not (isinstance(body.get(key), str) and body[key].isprintable() and body[key]):
                        body.pop(key, None)
            return f"session move to {target}"
        return "real session id"
    return None


def _learn(case: schemathesis.Case, status: int, origin: str, content: bytes, f: Fuzz) -> None:
    """Remember the kernels and sessions that the answer says exist (or no longer do)."""
    op = case.operation.label
    if case.method.upper() != case.operation.method.upper():
        return
    backend = origin.partition(":")[2] or None
    model = _json(content) if 200 <= status < 300 else None
    objs = f.objects
    if op == "POST /api/kernels" and status == 201 and isinstance(model, dict) and backend:
        objs.add_kernel(model["id"], backend, disposable=True)
        objs.live.append(("kernel", model["id"]))
    elif op.startswith("DELETE /api/kernels/") and status in (204, 404):
        objs.drop_kernel(case.path_parameters["kernel_id"])
    elif (
        op in ("POST /api/sessions", "PATCH /api/sessions/{session}") and backend and isinstance(model, dict)
    ):
        before = objs.sessions.get(model["id"])
        if before is None and op.startswith("POST"):
            objs.live.append(("session", model["id"]))
        elif before is not None and before != backend:
            RECORD.steered[f"moved {before} -> {backend}"] += 1
        objs.sessions[model["id"]] = backend
    elif op.startswith("DELETE /api/sessions/") and status in (204, 404):
        objs.sessions.pop(case.path_parameters["session"], None)
    f.cap_live()


def _first_line_of_failures(exc: BaseException) -> str:
    """The gist of a schemathesis FailureGroup: each failure's title and message."""
    failures = getattr(exc, "exceptions", None) or [exc]
    return " | ".join(" ".join(str(f).split())[:300] for f in failures)


# -- the fuzz test -----------------------------------------------------------------------------


@schema.parametrize()
@settings(
    deadline=None,
    # no shrinking or replay: a finding fails the case at once, with its reproduction,
    # which keeps the run bounded (Hypothesis stops generating for that operation)
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_fuzz_mixer_api(case: schemathesis.Case, fuzz: Fuzz) -> None:
    steered = _steer(case, fuzz.objects)
    headers = fuzz.stack.mixer_headers()
    base_url = fuzz.stack.mixer.url
    label = case.operation.label
    reproduce = case.as_curl_command(headers=headers, base_url=base_url)
    RECORD.calls += 1
    try:
        resp = case.call(base_url=base_url, session=fuzz.http, headers=headers, timeout=REQUEST_TIMEOUT)
    except requests.RequestException as exc:
        found = oracle.Finding("no answer", label, None, "mixer", f"{type(exc).__name__}: {exc}", reproduce)
        RECORD.violations.append(found)
        mixer = fuzz.stack.mixer
        dead = "" if mixer.running() else f"the mixer died:\n{mixer.process.tail_text()}\n"
        pytest.fail(f"{dead}{found}\nseed {SEED} ({REPEAT})")

    status, origin = resp.status_code, oracle.origin_of(resp.headers)
    RECORD.outcomes[(label, case.method.upper(), status, origin)] += 1
    if steered:
        RECORD.steered[f"{steered} -> {status} {origin}"] += 1
    body = resp.content.decode("utf-8", errors="replace")
    fuzz.write_log(
        operation=label, method=case.method, url=resp.request.url, steered=steered,
        body=repr(case.body)[:1000], status=status, origin=origin, answer=body[:1000],
    )  # fmt: skip

    findings: list[oracle.Finding] = []

    def finding(kind: str, detail: str, record: list[oracle.Finding] = RECORD.violations) -> None:
        found = oracle.Finding(kind, label, status, origin, detail, reproduce)
        record.append(found)
        if record is RECORD.violations:
            findings.append(found)

    if status >= 500:
        finding("mixer 5xx" if origin == "mixer" else "backend 5xx", body[:500])
    binary = (oracle.header(resp.headers, "content-type") or "").startswith("image/")
    leaked = [] if binary else oracle.leaks(body, oracle.request_text(resp.request.url or "", case.body))
    if leaked:
        record = RECORD.violations if origin == "mixer" else RECORD.backend_leaks
        finding("internal detail", "; ".join(leaked) + f" in {body[:500]!r}", record)
    if oracle.header(resp.headers, oracle.ERROR_HEADER):
        model = _json(resp.content)
        if not (isinstance(model, dict) and isinstance(model.get("message"), str) and "reason" in model):
            finding("mixer error not JSON {message, reason}", body[:500])
    if 200 <= status < 300 and case.method.upper() == case.operation.method.upper():
        try:
            case.validate_response(resp, checks=[response_schema_conformance])
        except (FailureGroup, AssertionError) as exc:
            finding("2xx answer not matching api.yaml", _first_line_of_failures(exc))
    for problem in oracle.naming_problems(label, status, _json(resp.content) if status < 300 else None):
        finding("kernel name without backend prefix", problem)
    logged = fuzz.new_mixer_log()
    if "Traceback (most recent call last)" in logged:
        finding("traceback in the mixer's log", logged[-3000:])
    _learn(case, status, origin, resp.content, fuzz)
    if not fuzz.stack.mixer.running():
        finding("the mixer died", fuzz.stack.mixer.process.tail_text())
    if findings:
        pytest.fail("\n".join(str(f) for f in findings) + f"\nseed {SEED} ({REPEAT})")


# -- afterwards --------------------------------------------------------------------------------


def test_mixer_survived_the_fuzzing(fuzz: Fuzz) -> None:
    """Runs after the fuzz test (pytest keeps definition order within a module): the
    mixer still serves, and the steered cases reached the code behind the validation.
    (Findings fail the fuzz test's own cases, not this one.)"""
    mixer = fuzz.stack.mixer
    assert RECORD.calls > 0, "the fuzz test did not run before this one"
    assert mixer.running(), f"the mixer is not running\n{mixer.process.tail_text()}"
    for base in (mixer.url, mixer.url_v4):
        resp = fuzz.http.get(base + "/api/kernelspecs", headers=fuzz.stack.mixer_headers(), timeout=30)
        assert resp.status_code == 200, resp.text[:500]
        assert set(SPECS.values()) <= set(resp.json()["kernelspecs"]), resp.text[:500]
    # kernels still route to their backends: start, get and delete one on each
    for backend in BACKENDS:
        resp = fuzz.mixer_request("POST", "/api/kernels", {"name": SPECS[backend]})
        assert resp.status_code == 201, resp.text[:500]
        assert oracle.header(resp.headers, oracle.BACKEND_HEADER) == backend
        kernel_id = resp.json()["id"]
        assert fuzz.mixer_request("GET", f"/api/kernels/{kernel_id}").status_code == 200
        assert fuzz.mixer_request("DELETE", f"/api/kernels/{kernel_id}").status_code == 204
    log = mixer.log_text()
    assert "Traceback" not in log, (
        "the mixer logged a traceback:\n" + mixer.process.tail_text(200)
    )

    # the steered (valid) requests reached the code behind the validation, on both backends
    for backend in BACKENDS:
        origin = f"backend:{backend}"
        assert RECORD.successes("POST /api/kernels", origin), (
            f"no kernel started on {backend}\n{RECORD.summary()}"
        )
        assert RECORD.successes("POST /api/sessions", origin), (
            f"no session started on {backend}\n{RECORD.summary()}"
        )
        for op in ("GET /api/kernelspecs/{kernel_name}", "GET /kernelspecs/{kernel_name}/{resource}"):
            assert RECORD.successes(op, origin), f"no successful {op} on {backend}\n{RECORD.summary()}"
    for op in (
        "GET /api/kernelspecs/{kernel_name}",
        "GET /kernelspecs/{kernel_name}/{resource}",
        "GET /api/kernels/{kernel_id}",
        "POST /api/kernels/{kernel_id}/interrupt",
        "POST /api/kernels/{kernel_id}/restart",
        "DELETE /api/kernels/{kernel_id}",
        "GET /api/sessions/{session}",
        "PATCH /api/sessions/{session}",
        "DELETE /api/sessions/{session}",
    ):
        assert RECORD.successes(op), f"no successful {op}\n{RECORD.summary()}"
    assert any(k.startswith("moved ") for k in RECORD.steered), f"no session moved\n{RECORD.summary()}"
