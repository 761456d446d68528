"""Three places to run kernels at once, from a config file: a local jupyter_server, a
Jupyter Kernel Gateway and a Jupyter Enterprise Gateway, all real processes.

Where the gateways differ from jupyter_server (observed with Kernel Gateway 3.0.1 and
Enterprise Gateway 3.3.0): no ``GET /api/status``; listing kernels and sessions is
forbidden (403) unless ``list_kernels`` is on; ``GET``/``PATCH /api/sessions/{id}``
answer 500. The mixer keeps the sessions of such a backend itself (sessions = "auto"
finds out) and, where listing is forbidden, lists the kernels it started there. Here
the Kernel Gateway runs with its defaults (listing forbidden) and the Enterprise
Gateway with ``EG_LIST_KERNELS=True``, so both ways are covered. Kernelspec resources
are served at the same paths as jupyter_server's, and both gateways take their token
as ``Authorization: token …`` (KG_AUTH_TOKEN, EG_AUTH_TOKEN).

Enterprise Gateway 3.x needs jupyter_server<2 and jupyter_client<7, so it lives in an
environment of its own: ``MIXER_E2E_ENTERPRISE_GATEWAY`` names its
``jupyter-enterprisegateway`` (else ``.venv-eg/bin`` in the repository, then this
Python's bin directory and PATH are tried). Where none runs, a second jupyter_server
stands in for it and the reason is reported as a warning; with
``MIXER_E2E_REQUIRE_GATEWAYS=1`` (CI) that is a failure instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from notebook_kernels_mixer.processes import free_port, http_status

from .helpers import PNG_MAGIC, where
from .support.api import DEFAULT_TIMEOUT, ApiClient, wait_until
from .support.processes import ManagedProcess
from .support.topology import PYTHON, VENV_BIN, clean_env, jupyter_home, jupyter_server, mixer_command

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NAMES = ("local", "kg", "eg")
SUFFIXES = {"local": " (Local)", "kg": " (Kernel Gateway)", "eg": " (Enterprise Gateway)"}


@dataclass
class Server:
    """One backend process and how to reach it directly (bypassing the mixer)."""

    name: str
    port: int
    token: str
    process: ManagedProcess
    standin_reason: str | None = None  # set when a jupyter_server stands in for a gateway

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def probe(self) -> bool:
        return http_status(self.url + "/api/kernelspecs", self.auth()) == 200


def _standin(workdir: Path, name: str, token: str, reason: str) -> Server:
    if os.environ.get("MIXER_E2E_REQUIRE_GATEWAYS") == "1":
        pytest.fail(f"MIXER_E2E_REQUIRE_GATEWAYS=1 but {reason}")
    warnings.warn(f"a jupyter_server stands in for {name}: {reason}", stacklevel=2)
    server = jupyter_server(name, workdir, where=name, token=token)
    return Server(name, server.port, token, server.process, standin_reason=reason)


def kernel_gateway(workdir: Path, token: str) -> Server:
    try:
        import kernel_gateway  # noqa: F401
    except ImportError as exc:
        return _standin(workdir, "kg", token, f"Kernel Gateway is not installed ({exc})")
    port = free_port()
    home, dirs = jupyter_home(workdir, "kg")
    # Its defaults: listing kernels and sessions is forbidden (403).
    env = clean_env({"MIXER_TEST_WHERE": "kg", "KG_AUTH_TOKEN": token, **dirs})
    argv = [PYTHON, "-m", "kernel_gateway", f"--port={port}", "--ip=127.0.0.1"]
    server = Server("kg", port, token, None)  # type: ignore[arg-type]
    server.process = ManagedProcess("kernel gateway", argv, log_path=home / "kg.log", env=env,
                                    cwd=home / "root", ready=server.probe, ready_timeout=90)
    return server


def enterprise_gateway_command() -> tuple[str | None, str]:
    """A working ``jupyter-enterprisegateway``, or None and why there is none."""
    candidates = [
        os.environ.get("MIXER_E2E_ENTERPRISE_GATEWAY"),
        str(REPO / ".venv-eg" / "bin" / "jupyter-enterprisegateway"),
        str(Path(VENV_BIN) / "jupyter-enterprisegateway"),
        shutil.which("jupyter-enterprisegateway"),
    ]
    reasons = []
    for exe in dict.fromkeys(c for c in candidates if c):
        if not Path(exe).exists():
            continue
        try:
            proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"{exe}: {exc}")
            continue
        if proc.returncode == 0:
            return exe, ""
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        reasons.append(f"{exe} --version failed: {last}")
    if not reasons:
        reasons.append("jupyter-enterprisegateway not found")
    return None, (
        "Enterprise Gateway cannot run here (" + "; ".join(reasons) + "). It needs "
        "jupyter_server<2 and jupyter_client<7, i.e. an environment of its own: "
        "python -m venv .venv-eg && .venv-eg/bin/pip install jupyter-enterprise-gateway ipykernel"
    )


def enterprise_gateway(workdir: Path, token: str) -> Server:
    exe, reason = enterprise_gateway_command()
    if exe is None:
        return _standin(workdir, "eg", token, reason)
    port = free_port()
    home, dirs = jupyter_home(workdir, "eg")
    env = clean_env({"MIXER_TEST_WHERE": "eg", "EG_AUTH_TOKEN": token, "EG_LIST_KERNELS": "True",
                     **dirs})
    argv = [exe, f"--port={port}", "--ip=127.0.0.1"]
    if os.geteuid() == 0:
        # EG refuses to start kernels for root by default (unauthorized_users).
        argv.append("--EnterpriseGatewayApp.unauthorized_users=set()")
    server = Server("eg", port, token, None)  # type: ignore[arg-type]
    server.process = ManagedProcess("enterprise gateway", argv, log_path=home / "eg.log",
                                    env=env, cwd=home / "root", ready=server.probe,
                                    ready_timeout=90)
    return server


@dataclass
class Three:
    servers: dict[str, Server]
    mixer: ManagedProcess
    mixer_url: str
    token: str
    xsrf: str
    workdir: Path


def write_config(workdir: Path, servers: dict[str, Server]) -> Path:
    """Every token form of the config model: a file, an environment variable."""
    (workdir / "local.token").write_text(servers["local"].token + "\n")
    (workdir / "eg.token").write_text(servers["eg"].token)
    path = workdir / "mixer.toml"
    path.write_text(f"""
[[backends]]
name = "local"
display_suffix = "{SUFFIXES['local']}"
url = "{servers['local'].url}/"
auth = "token"
token_file = "local.token"
local = true

[[backends]]
name = "kg"
display_suffix = "{SUFFIXES['kg']}"
url = "{servers['kg'].url}/"
auth = "token"
token_env = "E2E_KG_TOKEN"

[[backends]]
name = "eg"
display_suffix = "{SUFFIXES['eg']}"
url = "{servers['eg'].url}/"
auth = "token"
token_file = "eg.token"
request_timeout = "60s"
default = true
""")
    return path


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Three]:
    workdir = tmp_path_factory.mktemp("three")
    local_token = uuid.uuid4().hex
    local = jupyter_server("local", workdir, where="local", token=local_token)
    servers = {
        "local": Server("local", local.port, local_token, local.process),
        "kg": kernel_gateway(workdir, uuid.uuid4().hex),
        "eg": enterprise_gateway(workdir, uuid.uuid4().hex),
    }
    mixer = None
    try:
        for server in servers.values():
            server.process.start(wait=False)
        for server in servers.values():
            server.process.wait_ready()
        config = write_config(workdir, servers)
        port = free_port()
        mixer_url = f"http://127.0.0.1:{port}"
        mixer = ManagedProcess(
            "mixer",
            [*mixer_command(), f"--port={port}", f"--config={config}",
             f"--state-file={workdir / 'mixer-state.sqlite'}"],  # not Jupyter's runtime dir
            log_path=workdir / "mixer.log",
            env=clean_env({"E2E_KG_TOKEN": servers["kg"].token}),
            cwd=workdir,
            ready=lambda: http_status(mixer_url + "/api/kernelspecs", {"token": local_token}) == 200,
            ready_timeout=60,
        )
        mixer.start()
        yield Three(servers, mixer, mixer_url, local_token, uuid.uuid4().hex, workdir)
    finally:
        if mixer is not None:
            mixer.stop()
        for server in servers.values():
            server.process.stop()


@pytest.fixture
def kg_running(three: Three) -> Three:
    """The Kernel Gateway is up (the runtime-failure test stops and restarts it)."""
    if not three.servers["kg"].process.running():
        three.servers["kg"].process.start()
    return three


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=DEFAULT_TIMEOUT, trust_env=False) as session:
        yield session


@pytest.fixture
def mixer_api(http: aiohttp.ClientSession, three: Three) -> ApiClient:
    return ApiClient(http, three.mixer_url, auth=lambda: {"token": three.token}, xsrf=three.xsrf,
                     name="mixer")


def direct(http: aiohttp.ClientSession, server: Server) -> ApiClient:
    return ApiClient(http, server.url, auth=server.auth, name=server.name)


async def kernel_exists(http: aiohttp.ClientSession, server: Server, kernel_id: str) -> bool:
    # by id: the Kernel Gateway here does not list its kernels
    resp = await direct(http, server).get(f"/api/kernels/{kernel_id}")
    assert resp.status in (200, 404), resp.describe()
    return resp.status == 200


async def wait_gone(http: aiohttp.ClientSession, server: Server, kernel_id: str) -> None:
    async def gone() -> bool:
        return not await kernel_exists(http, server, kernel_id)

    await wait_until(gone, timeout=30, what=f"kernel {kernel_id} gone from {server.name}")


def report_standins(three: Three) -> str:
    return "; ".join(f"{s.name}: {s.standin_reason}" for s in three.servers.values()
                     if s.standin_reason)


# -- the tests ----------------------------------------------------------------------------------
async def test_all_specs_listed_with_prefixes_suffixes_and_resources(
    http: aiohttp.ClientSession, mixer_api: ApiClient, kg_running: Three
) -> None:
    three = kg_running
    specs = await mixer_api.kernelspecs()
    names = set(specs["kernelspecs"])
    assert {f"{n}-python3" for n in NAMES} <= names, (names, report_standins(three))
    assert all(name.split("-", 1)[0] in NAMES for name in names)
    assert specs["default"] == "eg-python3"  # the backend marked default = true
    for name in NAMES:
        model = specs["kernelspecs"][f"{name}-python3"]
        assert model["spec"]["display_name"] == "Python 3 (ipykernel)" + SUFFIXES[name]
        logo = model["resources"]["logo-64x64"]
        assert logo == f"/kernelspecs/{name}-python3/logo-64x64.png"
        through = await mixer_api.get(logo)
        assert through.status == 200 and through.body.startswith(PNG_MAGIC), through.describe()
        own = await direct(http, three.servers[name]).get("/kernelspecs/python3/logo-64x64.png")
        assert own.status == 200 and through.body == own.body
        one = await mixer_api.ok_json("GET", f"/api/kernelspecs/{name}-python3")
        assert one["name"] == f"{name}-python3" and one["resources"]["logo-64x64"] == logo


async def test_a_kernel_on_each_backend_runs_there(
    http: aiohttp.ClientSession, mixer_api: ApiClient, kg_running: Three
) -> None:
    three = kg_running
    kernels = await asyncio.gather(*(mixer_api.start_kernel(f"{n}-python3") for n in NAMES))
    try:
        for name, kernel in zip(NAMES, kernels, strict=True):
            assert kernel["name"] == f"{name}-python3"
            assert await kernel_exists(http, three.servers[name], kernel["id"])
        listed = {k["id"]: k["name"] for k in await mixer_api.kernels()}
        for name, kernel in zip(NAMES, kernels, strict=True):
            # the Kernel Gateway forbids listing; the mixer lists what it started there
            assert listed.get(kernel["id"]) == f"{name}-python3", listed
        ran = await asyncio.gather(*(where(http, mixer_api, k["id"]) for k in kernels))
        assert list(ran) == list(NAMES), report_standins(three)
    finally:
        for kernel in kernels:
            resp = await mixer_api.delete_kernel(kernel["id"])
            assert resp.status == 204, resp.describe()
    for name, kernel in zip(NAMES, kernels, strict=True):
        await wait_gone(http, three.servers[name], kernel["id"])


async def test_one_notebook_session_moves_through_all_three(
    http: aiohttp.ClientSession, mixer_api: ApiClient, kg_running: Three
) -> None:
    three = kg_running
    body = {"path": "moves.ipynb", "name": "moves.ipynb", "type": "notebook",
            "kernel": {"name": "local-python3"}}
    session = await mixer_api.ok_json("POST", "/api/sessions", body, expect=(201,))
    sid, kernel_id, owner = session["id"], session["kernel"]["id"], "local"
    try:
        assert await where(http, mixer_api, kernel_id) == "local"
        for target in ("kg", "eg", "local"):
            moved = await mixer_api.ok_json(
                "PATCH", f"/api/sessions/{sid}", {"kernel": {"name": f"{target}-python3"}}
            )
            assert moved["id"] == sid, "the client keeps its session id"
            assert moved["kernel"]["name"] == f"{target}-python3"
            assert moved["path"] == "moves.ipynb"
            assert moved["kernel"]["id"] != kernel_id
            await wait_gone(http, three.servers[owner], kernel_id)  # the old kernel is shut down
            kernel_id, owner = moved["kernel"]["id"], target
            assert await where(http, mixer_api, kernel_id) == target, report_standins(three)
            got = await mixer_api.ok_json("GET", f"/api/sessions/{sid}")
            assert got["kernel"]["id"] == kernel_id
            listed = [s for s in await mixer_api.sessions() if s["id"] == sid]
            assert [s["kernel"]["name"] for s in listed] == [f"{target}-python3"]
    finally:
        resp = await mixer_api.delete(f"/api/sessions/{sid}")
        assert resp.status == 204, resp.describe()
    await wait_gone(http, three.servers[owner], kernel_id)
    assert sid not in {s["id"] for s in await mixer_api.sessions()}


async def test_a_backend_failing_at_runtime_shows_in_status(
    http: aiohttp.ClientSession, mixer_api: ApiClient, kg_running: Three
) -> None:
    three = kg_running
    kg = three.servers["kg"]
    kg.process.stop()

    async def kg_down() -> dict | None:
        status = await mixer_api.ok_json("GET", "/mixer/api/status")
        backend = next(b for b in status["backends"] if b["name"] == "kg")
        return backend if not backend["reachable"] else None

    down = await wait_until(kg_down, timeout=30, what="kg reported unreachable")
    assert "cannot connect" in down["last_error"], down
    # a kernel count is shown only as the last-known one, and then says since when
    stale = down["stale_since"] or {}
    assert (down["kernels"] is None) == ("kernels" not in stale), down
    status = await mixer_api.ok_json("GET", "/mixer/api/status")
    others = {b["name"]: b for b in status["backends"] if b["name"] != "kg"}
    assert all(b["reachable"] for b in others.values()) and others["eg"]["default"]
    text = str(status)
    assert all(s.token not in text for s in three.servers.values())  # credential state only

    page = await mixer_api.get("/mixer/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert '<tr class="down"><td>kg</td>' in page.text, page.text
    assert "cannot connect" in page.text

    proc = await asyncio.to_thread(
        subprocess.run,
        [*mixer_command(), "status", f"--url={three.mixer_url}", f"--token={three.token}"],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 1: some backend is unreachable
    row = next(line for line in proc.stdout.splitlines() if line.startswith("kg "))
    assert " NO " in row, proc.stdout
    assert "kg: " in proc.stdout.split("last errors:")[1], proc.stdout

    # the others keep working
    specs = await mixer_api.kernelspecs()
    assert {"local-python3", "eg-python3"} <= set(specs["kernelspecs"])
    assert not specs["default"].startswith("kg-")  # listed last-known, never the default

    kg.process.start()  # back on the same port: the mixer's probe notices

    async def kg_up() -> bool:
        status = await mixer_api.ok_json("GET", "/mixer/api/status")
        return next(b for b in status["backends"] if b["name"] == "kg")["reachable"]

    await wait_until(kg_up, timeout=30, what="kg reachable again")
    proc = await asyncio.to_thread(
        subprocess.run,
        [*mixer_command(), "status", f"--url={three.mixer_url}", f"--token={three.token}"],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
