import asyncio
import dataclasses
import time

import pytest
from aiohttp import web

from notebook_kernels_mixer.app import INVENTORY
from notebook_kernels_mixer.resources.kernelspecs import (
    BackendSpecs,
    merge,
    translate_spec,
    translate_specs,
)
from tests.fakes import FakeJupyter
from tests.unit.conftest import Mixer


def spec(name: str, display: str, parent: str | None = None) -> dict:
    resources = {"logo-64x64": f"/base/kernelspecs/{name}/logo-64x64.png"}
    if parent:
        resources["endpointParentResource"] = parent
    return {"name": name, "spec": {"display_name": display, "language": "python"},
            "resources": resources}


def test_translate_prefixes_suffixes_and_rewrites_resources() -> None:
    out = translate_spec(spec("python3", "Python 3 (ipykernel)"), "remote", " (Remote)")
    assert out is not None
    assert out["name"] == "remote-python3"
    assert out["spec"]["display_name"] == "Python 3 (ipykernel) (Remote)"
    assert out["spec"]["language"] == "python"
    assert out["resources"]["logo-64x64"] == "/kernelspecs/remote-python3/logo-64x64.png"


def test_translate_skips_what_is_not_a_spec() -> None:
    answer = {"default": "python3", "kernelspecs": {"a": "garbage", "b": {"no": "name"},
                                                     "python3": spec("python3", "P")}}
    view = translate_specs(answer, "local", " (Local)")
    assert list(view.specs) == ["local-python3"]
    assert view.default == "local-python3"


def test_default_is_a_spec_that_exists() -> None:
    view = translate_specs({"default": "gone", "kernelspecs": {"r": spec("r", "R")}}, "remote", "")
    assert view.default is None
    merged = merge([view, translate_specs({"default": "python3",
                                           "kernelspecs": {"python3": spec("python3", "P")}},
                                          "local", "")])
    assert merged["default"] == "local-python3"
    assert set(merged["kernelspecs"]) == {"remote-r", "local-python3"}


def test_default_prefers_first_view_and_order_is_stable() -> None:
    remote = translate_specs(
        {"default": "python3", "kernelspecs": {
            "python3": spec("python3", "Python 3", parent="projects/p/locations/b"),
            "r": spec("r", "R", parent="projects/p/locations/a")}}, "remote", " (Remote)")
    local = translate_specs(
        {"default": "python3", "kernelspecs": {"python3": spec("python3", "Python 3"),
                                               "julia": spec("julia", "Julia")}}, "local", " (Local)")
    merged = merge([remote, local])
    assert merged["default"] == "remote-python3"
    # no parent ("") sorts first, then by parent, then by display name
    assert list(merged["kernelspecs"]) == ["local-julia", "local-python3", "remote-r", "remote-python3"]
    assert merge([local, remote])["kernelspecs"].keys() == merged["kernelspecs"].keys()


def test_merge_of_nothing() -> None:
    assert merge([BackendSpecs({}, None)]) == {"default": None, "kernelspecs": {}}


async def test_listing_merges_all_backends(fakes, mixer) -> None:
    local = await fakes("local", specs=("python3", "julia"))
    remote = await fakes("remote", specs=("python3",))
    m: Mixer = await mixer([("local", local), ("remote", remote)])
    status, body = await m.call("GET", "/api/kernelspecs")
    assert status == 200
    assert body["default"] == "remote-python3"
    assert set(body["kernelspecs"]) == {"local-python3", "local-julia", "remote-python3"}
    status, one = await m.call("GET", "/api/kernelspecs/remote-python3")
    assert status == 200 and one["spec"]["display_name"] == "Python3 on remote (Remote)"
    async with m.session.get(m.url + "/kernelspecs/remote-python3/logo-64x64.png",
                             headers=m.headers()) as r:
        assert r.status == 200 and await r.read() == b"remote:logo-64x64.png"
    status, _ = await m.call("GET", "/api/kernelspecs/remote-nope")
    assert status == 404
    status, err = await m.call("GET", "/api/kernelspecs/python3")
    assert status == 400 and "prefix" in err["message"]


class Rendezvous:
    """Backends that answer a listing only once every backend has been asked for it:
    asked one after the other, the first waits for the second in vain."""

    def __init__(self, parties: int, wait: float) -> None:
        self.parties, self.wait = parties, wait
        self.arrived: dict[str, int] = {}
        self.all_there: dict[str, asyncio.Event] = {}
        self.met: dict[str, list[bool]] = {}

    async def meet(self, path: str) -> None:
        self.arrived[path] = self.arrived.get(path, 0) + 1
        event = self.all_there.setdefault(path, asyncio.Event())
        if self.arrived[path] == self.parties:
            event.set()
        try:
            await asyncio.wait_for(event.wait(), self.wait)
            self.met.setdefault(path, []).append(True)
        except asyncio.TimeoutError:
            self.met.setdefault(path, []).append(False)


class MeetingFake(FakeJupyter):
    rendezvous: Rendezvous

    async def kernelspecs(self, request: web.Request) -> web.Response:
        await self.rendezvous.meet(request.path)
        return await super().kernelspecs(request)

    async def list_kernels(self, request: web.Request) -> web.Response:
        await self.rendezvous.meet(request.path)
        return await super().list_kernels(request)

    async def list_sessions(self, request: web.Request) -> web.Response:
        await self.rendezvous.meet(request.path)
        return await super().list_sessions(request)


async def test_listing_asks_backends_concurrently(mixer) -> None:
    # Regression guard (issue 3), by order of events, not by time: each backend holds
    # its answer until the other has been asked too. Asked one after the other, the
    # first one gives up waiting (after 10 s, where asked at once both arrive within
    # milliseconds) and says so.
    rendezvous = Rendezvous(parties=2, wait=10.0)
    fakes = [MeetingFake(name) for name in ("local", "remote")]
    for fake in fakes:
        fake.rendezvous = rendezvous
        await fake.start()
    try:
        m = await mixer([("local", fakes[0]), ("remote", fakes[1])], list_timeout=60.0,
                        request_timeout=60.0)
        for path in ("/api/kernels", "/api/kernelspecs", "/api/sessions"):
            status, _ = await m.call("GET", path)
            assert status == 200
            assert rendezvous.met[path] == [True, True], f"{path}: backends asked one after the other"
    finally:
        for fake in fakes:
            await fake.stop()


async def test_blackholed_backend_cannot_hold_a_listing(fakes, blackhole, mixer) -> None:
    # Bounds here are not speed targets: each is far (60 s) from what the mixer does
    # (0.5 s) and far (an hour) from what a mixer that waited for the blackhole would do.
    local = await fakes("local")
    local._new_kernel("python3")
    m = await mixer([("local", local), ("remote", blackhole.url)], list_timeout=0.5,
                    request_timeout=3600.0)
    status, kernels = await asyncio.wait_for(m.call("GET", "/api/kernels"), 60)
    assert status == 200 and [k["name"] for k in kernels] == ["local-python3"]
    assert blackhole.requests.count("GET /api/kernels") == 1  # it was asked, and held on
    # Later listings do not wait for it again (until its probe says it answers): from
    # here on, waiting for it would take an hour.
    remote = m.app[INVENTORY].backends["remote"]
    remote.config = dataclasses.replace(remote.config, list_timeout=3600.0)
    for path in ("/api/kernels", "/api/kernelspecs"):
        status, body = await asyncio.wait_for(m.call("GET", path), 60)
        assert status == 200
    assert blackhole.requests.count("GET /api/kernels") == 1  # not even asked again
    assert list(body["kernelspecs"]) == ["local-python3"]
    assert body["default"] == "local-python3"


async def test_kernelspecs_are_cached_and_refreshed(fakes, mixer) -> None:
    local = await fakes("local")
    m = await mixer([("local", local)], kernelspecs_ttl=0.3)
    await m.call("GET", "/api/kernelspecs")
    await m.call("GET", "/api/kernelspecs")
    asked = [s for s in local.seen if s.path == "/api/kernelspecs"]
    assert len(asked) == 1  # the second answer came from the cache
    local.specs = ("python3", "newone")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _, body = await m.call("GET", "/api/kernelspecs")
        if "local-newone" in body["kernelspecs"]:
            break
        await asyncio.sleep(0.1)
    assert "local-newone" in body["kernelspecs"]


# -- what a remote's resources and errors may be served as ---------------------------------------
SCRIPT = b"<html><script>alert(document.cookie)</script></html>"
SANDBOXED = {"X-Content-Type-Options": "nosniff",
             "Content-Security-Policy": "default-src 'none'; sandbox"}


class Hostile(FakeJupyter):
    """Serves every kernelspec resource, and its errors, as an HTML page with a script."""

    async def resource(self, request: web.Request) -> web.Response:
        status = 404 if request.match_info["res"].startswith("missing") else 200
        return web.Response(body=SCRIPT, status=status, content_type="text/html")

    async def kernelspec(self, request: web.Request) -> web.Response:
        return web.Response(body=SCRIPT, status=500, content_type="text/html")


def assert_sandboxed(headers) -> None:  # type: ignore[no-untyped-def]
    for name, value in SANDBOXED.items():
        assert headers.get(name) == value, f"{name}: {headers.get(name)!r}"


@pytest.mark.parametrize(("resource", "content_type"), [
    ("evil.png", "image/png"),
    ("logo-64x64.png", "image/png"),
    ("logo-svg.svg", "image/svg+xml"),
    ("kernel.js", "text/plain; charset=utf-8"),
    ("kernel.css", "text/plain; charset=utf-8"),
    ("kernel.json", "application/json"),
    ("sub/evil.PNG", "image/png"),
])
async def test_a_resource_has_the_type_of_its_extension_never_the_backends(
        fakes, mixer, resource: str, content_type: str) -> None:
    local = await fakes("local")
    remote = await Hostile("remote").start()
    try:
        m: Mixer = await mixer([("local", local), ("remote", remote)])
        async with m.session.get(m.url + f"/kernelspecs/remote-python3/{resource}",
                                 headers=m.headers()) as r:
            assert r.status == 200 and await r.read() == SCRIPT
            assert r.headers["Content-Type"] == content_type
            assert "Content-Disposition" not in r.headers
            assert_sandboxed(r.headers)
            assert r.headers["X-Mixer-Backend"] == "remote"
    finally:
        await remote.stop()


@pytest.mark.parametrize("resource", ["evil.html", "evil", "evil.png.html", "kernel.xml"])
async def test_a_resource_of_another_type_is_a_download(fakes, mixer, resource: str) -> None:
    local = await fakes("local")
    remote = await Hostile("remote").start()
    try:
        m: Mixer = await mixer([("local", local), ("remote", remote)])
        async with m.session.get(m.url + f"/kernelspecs/remote-python3/{resource}",
                                 headers=m.headers()) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/octet-stream"
            assert r.headers["Content-Disposition"] == f'attachment; filename="{resource}"'
            assert_sandboxed(r.headers)
    finally:
        await remote.stop()


async def test_a_backends_error_bodies_and_answers_are_sandboxed(fakes, mixer) -> None:
    local = await fakes("local")
    remote = await Hostile("remote").start()
    try:
        m: Mixer = await mixer([("local", local), ("remote", remote)])
        # a resource's error, and an API error: the backend's status and body, sandboxed
        for path, status in (("/kernelspecs/remote-python3/missing.png", 404),
                             ("/api/kernelspecs/remote-python3", 500)):
            async with m.session.get(m.url + path, headers=m.headers()) as r:
                assert r.status == status and await r.read() == SCRIPT
                assert r.headers["X-Mixer-Backend"] == "remote"
                assert_sandboxed(r.headers)
        # the mixer's JSON answers made of what backends said
        for path in ("/api/kernelspecs", "/api/kernelspecs/local-python3", "/api/kernels"):
            async with m.session.get(m.url + path, headers=m.headers()) as r:
                assert r.status == 200 and r.content_type == "application/json"
                assert_sandboxed(r.headers)
    finally:
        await remote.stop()
