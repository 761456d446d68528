"""Protection (SPEC §6): token, XSRF, websocket Origin, bad input — all answered
before any backend is contacted, and the mixer keeps serving afterwards."""

import asyncio
import logging

import aiohttp
import pytest
from aiohttp import web

from notebook_kernels_mixer.front.hosts import hostname
from tests.unit.conftest import TOKEN, XSRF

GOOD_XSRF = {"Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF}


@pytest.mark.parametrize(
    "headers,query",
    [
        ({"token": TOKEN}, ""),
        ({"Authorization": f"token {TOKEN}"}, ""),
        ({"Authorization": "token ", "token": TOKEN}, ""),  # what GatewayClient sends
        ({}, f"?token={TOKEN}"),
    ],
)
async def test_each_token_form_admits(fakes, mixer, headers, query) -> None:
    m = await mixer([("local", await fakes("local"))])
    status, _ = await m.call("GET", "/api/kernels" + query, headers=headers)
    assert status == 200


@pytest.mark.parametrize(
    "headers,query",
    [
        ({}, ""),
        ({"token": "wrong"}, ""),
        ({"Authorization": "token wrong"}, ""),
        ({"Authorization": "token "}, ""),
        ({}, "?token=wrong"),
        ({"token": TOKEN[:-1]}, ""),
    ],
)
async def test_wrong_or_missing_token_is_403_and_no_backend_contacted(fakes, mixer, headers, query):
    local = await fakes("local")
    m = await mixer([("local", local)])
    for method, path in (("GET", "/api/kernels"), ("GET", "/lab"), ("POST", "/api/kernels"),
                         ("GET", "/api/kernels/x/channels")):
        status, body = await m.call(method, path + query, headers={**headers, **GOOD_XSRF})
        assert status == 403, (method, path)
        assert "token" in body["message"]
    assert local.seen == []
    status, _ = await m.call("GET", "/api/kernels")
    assert status == 200  # still serving


BAD_XSRF = [{}, {"Cookie": f"_xsrf={XSRF}"}, {"X-XSRFToken": XSRF},
            {"Cookie": "_xsrf=a", "X-XSRFToken": "b"}]
UNSAFE = (("POST", "/api/kernels"), ("PATCH", "/api/sessions/abc"),
          ("DELETE", "/api/kernels/abc"), ("PUT", "/api/contents/x"))


@pytest.mark.parametrize("xsrf", BAD_XSRF)
async def test_without_a_token_unsafe_methods_need_matching_xsrf(fakes, mixer, xsrf) -> None:
    local = await fakes("local")
    m = await mixer([("local", local)], token=None)
    for method, path in UNSAFE:
        status, body = await m.call(method, path, headers={"Accept": "*/*", **xsrf}, json={})
        assert status == 403 and "_xsrf" in body["message"], (method, path)
    assert local.seen == []
    status, _ = await m.call("GET", "/api/kernels", headers={"Accept": "application/json"})
    assert status == 200  # safe methods need no pair
    status, _ = await m.call("POST", "/api/kernels", json={"name": "local-python3"},
                             headers={"Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF})
    assert status == 201


@pytest.mark.parametrize(
    "auth,query",
    [({"token": TOKEN}, ""), ({"Authorization": f"token {TOKEN}"}, ""), ({}, f"?token={TOKEN}")],
    ids=["token-header", "authorization", "query"],
)
async def test_token_authenticated_requests_need_no_xsrf(fakes, mixer, auth, query) -> None:
    """Issue 13: editors' clients (@jupyterlab/services in Node) send the token and no
    _xsrf cookie; jupyter_server does not ask them for an XSRF pair, nor does the mixer."""
    local = await fakes("local")
    m = await mixer([("local", local)])
    for xsrf in BAD_XSRF:
        status, body = await m.call("POST", "/api/kernels" + query,
                                    headers={"Accept": "*/*", **auth, **xsrf},
                                    json={"name": "local-python3"})
        assert status == 201, body
        status, _ = await m.call("DELETE", f"/api/kernels/{body['id']}{query}",
                                 headers={"Accept": "*/*", **auth})
        assert status == 204
    status, _ = await m.call("PUT", "/api/contents/x" + query, headers={"Accept": "*/*", **auth},
                             json={})
    assert status != 403 and any(s.path == "/api/contents/x" for s in local.seen)


@pytest.mark.parametrize(
    "body,message",
    [
        (b"{bad", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"name"', "JSON object"),
        (b'{"name": 5}', "'name' must be a string"),
        (b'{"name": "local-python3", "env": []}', "'env' must be an object"),
        (b'{"name": "nope-python3"}', "unknown kernelspec"),
        (b'{"name": "python3"}', "unknown kernelspec"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_bad_kernel_requests_get_400_with_a_message(fakes, mixer, body, message) -> None:
    local = await fakes("local")
    m = await mixer([("local", local)])
    status, answer = await m.call("POST", "/api/kernels", data=body)
    assert status == 400
    assert message in answer["message"]
    assert local.kernels == {}


@pytest.mark.parametrize(
    "body,message",
    [
        (b'{"kernel": "python3"}', "'kernel' must be an object"),
        (b'{"kernel": {"name": 3}}', "'name' must be a string"),
        (b'{"path": 3, "kernel": {"name": "local-python3"}}', "'path' must be a string"),
        (b'{"kernel": {"name": "other-python3"}}', "unknown kernelspec"),
        (b'{"kernel": {"id": "../../x"}}', "invalid kernel id"),
    ],
)
async def test_bad_session_requests_get_400(fakes, mixer, body, message) -> None:
    local = await fakes("local")
    m = await mixer([("local", local)])
    status, answer = await m.call("POST", "/api/sessions", data=body)
    assert status == 400 and message in answer["message"]
    assert local.sessions == {}


async def test_oversized_body_is_413(fakes, mixer) -> None:
    local = await fakes("local")
    m = await mixer([("local", local)], max_body_bytes=1000)
    status, answer = await m.call("POST", "/api/kernels", data=b'{"name": "' + b"x" * 5000 + b'"}')
    assert status == 413 and "larger than" in answer["message"]
    status, _ = await m.call("POST", "/api/kernels", json={"name": "local-python3"})
    assert status == 201


async def test_unknown_ids_are_404_after_asking_backends(fakes, mixer) -> None:
    local, remote = await fakes("local"), await fakes("remote")
    m = await mixer([("local", local), ("remote", remote)])
    for method, path in (("GET", "/api/kernels/0d1a"), ("DELETE", "/api/kernels/0d1a"),
                         ("POST", "/api/kernels/0d1a/interrupt"), ("GET", "/api/sessions/0d1a"),
                         ("PATCH", "/api/sessions/0d1a"), ("DELETE", "/api/sessions/0d1a")):
        status, body = await m.call(method, path, json={})
        assert status == 404, (method, path, body)
        assert "0d1a" in body["message"]
    assert any(s.path == "/api/kernels/0d1a" for s in remote.seen)


@pytest.mark.parametrize(
    "path", ["/api/kernels/..%2F..%2Fapi%2Fcontents", "/api/kernels/a%0d%0aX-Evil:%201",
             "/api/sessions/..", "/kernelspecs/local-python3/..%2Fkernel.json",
             "/kernelspecs/local-..%2F..%2Fetc/passwd"],
)
async def test_ids_and_paths_cannot_escape(fakes, mixer, path) -> None:
    local = await fakes("local")
    m = await mixer([("local", local)])
    async with m.session.get(m.url + path, headers=m.headers()) as resp:
        assert resp.status in (400, 404)
    assert all(s.path.startswith(("/api/kernels/", "/api/sessions", "/kernelspecs/")) is False
               or ".." not in s.path for s in local.seen)
    assert not any("X-Evil" in s.path or "\r" in s.path for s in local.seen)


@pytest.mark.parametrize(
    "origin,allowed",
    [
        (None, True),  # not a browser: GatewayClient, editors, scripts
        ("http://127.0.0.1:{port}", True),  # the mixer's own origin
        ("http://localhost:{port}", False),  # another host name is another site
        ("http://localhost:3000", False),  # a page of another local program
        ("http://127.0.0.1:9", False),
        ("https://127.0.0.1:{port}", False),  # another scheme
        ("https://evil.example", False),
        ("null", False),
        ("not a url", False),
    ],
)
async def test_only_the_mixers_own_origin_is_admitted(fakes, mixer, origin, allowed) -> None:
    """jupyter_server's rule, for websockets and requests alike, token or not: a page
    served by another local program must not reach the kernels."""
    local = await fakes("local")
    kernel = local._new_kernel("python3")
    for token in (TOKEN, None):
        local.seen.clear()
        m = await mixer([("local", local)], token=token)
        port = m.url.rsplit(":", 1)[1]
        headers = {"token": TOKEN} if token else {}
        if origin:
            headers["Origin"] = origin.format(port=port)
        url = m.url.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels"
        status, _ = await m.call("GET", "/api/kernels", headers=headers)
        if allowed:
            assert status == 200
            async with m.session.ws_connect(url, headers=headers) as ws:
                await ws.send_str("hi")
                assert (await ws.receive(timeout=5)).data == "hi"
            continue
        assert status == 403
        for path in ("/api/events/subscribe", f"/api/kernels/{kernel['id']}/channels"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await m.session.ws_connect(m.url.replace("http", "ws") + path, headers=headers)
            assert info.value.status == 403
        assert local.seen == []


async def test_a_foreign_admitted_origin_reaches_the_local_server_only(fakes, mixer) -> None:
    """``--allow-origin`` admits a site at the mixer; the local server still sees that
    Origin and applies its own check; a remote never sees the client's Origin."""
    local, remote = await fakes("local"), await fakes("remote")
    m = await mixer([("local", local), ("remote", remote)], allowed_origins=("https://lab.example.org",))
    own = m.url
    for origin, to_local in (("https://lab.example.org", "https://lab.example.org"),
                             (own, local.url)):
        for fake in (local, remote):
            fake.seen.clear()
            kernel = fake._new_kernel("python3")
            url = m.url.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels"
            async with m.session.ws_connect(url, headers={"token": TOKEN, "Origin": origin}) as ws:
                await ws.send_str("hi")
                assert (await ws.receive(timeout=5)).data == "hi"
        (seen_local,) = [s for s in local.seen if s.path.endswith("/channels")]
        (seen_remote,) = [s for s in remote.seen if s.path.endswith("/channels")]
        assert seen_local.headers.get("Origin") == to_local.rstrip("/")
        assert seen_remote.headers.get("Origin") in (None, remote.url.rstrip("/"))
        assert "lab.example.org" not in str(seen_remote.headers)
    local.seen.clear()
    await m.call("GET", "/lab", headers={"token": TOKEN, "Origin": "https://lab.example.org"})
    assert local.seen[-1].headers.get("Origin") == "https://lab.example.org"


async def test_configured_origin_is_admitted(fakes, mixer) -> None:
    local = await fakes("local")
    kernel = local._new_kernel("python3")
    m = await mixer([("local", local)], allowed_origins=("https://lab.example.org",))
    url = m.url.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels"
    async with m.session.ws_connect(
        url, headers={"token": TOKEN, "Origin": "https://lab.example.org"}
    ) as ws:
        await ws.send_str("ok")
        assert (await ws.receive(timeout=5)).data == "ok"


# -- Host (DNS rebinding, issue 11 item 2) ------------------------------------------------------


@pytest.mark.parametrize(
    "header,host",
    [("[::1]:8081", "::1"), ("127.0.0.1:9", "127.0.0.1"), ("LocalHost:80", "localhost"),
     ("evil.example", "evil.example"), ("::1", "::1"), ("[::1]", "::1"), (" a.b:1 ", "a.b")],
)
def test_hostname_of_a_host_header(header: str, host: str) -> None:
    assert hostname(header) == host


ADMITTED_HOSTS = ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "LOCALHOST", "127.0.0.2:1",
                  "localhost"]
REFUSED_HOSTS = ["evil.example:{port}", "evil.example", "0.0.0.0:{port}", "[::]:{port}",
                 "127.0.0.1.evil.example:{port}", "localhost.evil.example", "[::2]:{port}",
                 "10.0.0.1:{port}", "192.168.1.20"]


async def _host_mixer(fakes, mixer, token: str | None):
    local = await fakes("local")
    kernel = local._new_kernel("python3")
    m = await mixer([("local", local)], token=token)
    return local, kernel, m, m.url.rsplit(":", 1)[1]


@pytest.mark.parametrize("token", [TOKEN, None], ids=["token", "no-token"])
@pytest.mark.parametrize("template", REFUSED_HOSTS)
async def test_foreign_host_is_refused_token_or_not(fakes, mixer, token, template) -> None:
    local, kernel, m, port = await _host_mixer(fakes, mixer, token)
    host = template.format(port=port)
    headers = m.headers(Host=host)
    for method, path in (("GET", "/api/kernels"), ("GET", "/api/kernelspecs"), ("GET", "/lab"),
                         ("POST", "/api/kernels"), ("GET", "/mixer/api/status")):
        status, body = await m.call(method, path, headers=headers, json={"name": "local-python3"})
        assert status == 403, (method, path, body)
        assert "Host" in body["message"]
    url = m.url.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels?token={TOKEN}"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await m.session.ws_connect(url, headers={**headers, "Origin": f"http://{host}"})
    assert info.value.status == 403
    assert local.seen == []
    status, _ = await m.call("GET", "/api/kernels")
    assert status == 200  # still serving


@pytest.mark.parametrize("template", ADMITTED_HOSTS)
async def test_loopback_hosts_are_admitted(fakes, mixer, template) -> None:
    local, kernel, m, port = await _host_mixer(fakes, mixer, None)
    host = template.format(port=port)
    status, _ = await m.call("GET", "/api/kernels", headers={"Host": host})
    assert status == 200
    url = m.url.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels"
    async with m.session.ws_connect(url, headers={"Host": host, "Origin": f"http://{host}"}) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "hi"


async def test_external_hostname_and_allowed_origin_hosts_are_admitted(fakes, mixer) -> None:
    local = await fakes("local")
    m = await mixer([("local", local)], external_hostname="mixer.example.org",
                    allowed_origins=("https://lab.example.org:8443",))
    for host, status in (("mixer.example.org", 200), ("Mixer.Example.Org:443", 200),
                         ("lab.example.org:8443", 200), ("lab.example.org", 200),
                         ("example.org", 403), ("evil.mixer.example.org", 403)):
        got, _ = await m.call("GET", "/api/kernels", headers=m.headers(Host=host))
        assert got == status, host


@pytest.mark.parametrize("name", ["token", "Authorization", "X-XSRFToken", "Cookie"])
async def test_a_header_that_is_not_utf8_is_refused_not_a_crash(fakes, mixer, name) -> None:
    local = await fakes("local")
    for token in (TOKEN, None):
        m = await mixer([("local", local)], token=token)
        value = b"\xff\xfe" + (b"token \xff" if name == "Authorization" else b"")
        if name == "Cookie":
            value = b"_xsrf=\xff"
        status, body = await _raw_request(m.url, b"POST", b"/api/kernels", {name.encode(): value})
        assert status == 403, body
        status, _ = await m.call("GET", "/api/kernels")
        assert status == 200  # still serving
    assert [s for s in local.seen if s.method == "POST"] == []


async def _raw_request(base: str, method: bytes, path: bytes,
                       headers: dict[bytes, bytes]) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange with header bytes no HTTP client library would send."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = b"%s %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Length: 2\r\nConnection: close\r\n" % (
            method, path, host.encode(), port.encode())
        head += b"".join(k + b": " + v + b"\r\n" for k, v in headers.items())
        writer.write(head + b"\r\n{}")
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer


async def test_no_token_is_warned_about_at_startup(fakes, mixer, caplog) -> None:
    caplog.set_level(logging.WARNING)
    local = await fakes("local")
    await mixer([("local", local)])
    assert "no token configured" not in caplog.text
    await mixer([("local", local)], token=None)
    assert "no token configured" in caplog.text


# -- an answer that fails part-way (issue 11 item 3) --------------------------------------------


class HalfBody:
    """An upstream that sends a head announcing 1000 bytes, then 500 of them, then dies
    (``hang``: then says nothing more, so the mixer's read timeout fires)."""

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: 1000\r\n\r\n" + b"x" * 500)
            await writer.drain()
            if self.hang:
                await asyncio.sleep(10)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def raw_get(url: str, path: str) -> bytes:
    """Everything the mixer sends for one GET, until it closes or resets the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\ntoken: {TOKEN}\r\n\r\n".encode())
    received = b""
    try:
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return received


@pytest.mark.parametrize("hang", [False, True], ids=["dies", "read-timeout"])
async def test_backend_failing_mid_body_aborts_the_client_connection(mixer, caplog, hang) -> None:
    caplog.set_level(logging.DEBUG)
    upstream = HalfBody(hang=hang)
    try:
        m = await mixer([("local", await upstream.start())], request_timeout=0.5)
        received = await raw_get(m.url, "/files/big.bin")
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and received.count(b"HTTP/1.") == 1
        assert len(body) < 1000 and b"message" not in body  # no error answer in the body
        with pytest.raises(aiohttp.ClientPayloadError):
            async with m.session.get(m.url + "/files/big.bin", headers=m.headers()) as resp:
                await resp.read()
    finally:
        await upstream.stop()
    aborts = [r.getMessage() for r in caplog.records if r.name.endswith("middlewares")]
    assert len(aborts) == 2 and all("'local'" in a and "aborted" in a for a in aborts), aborts
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_errors_never_answer_after_the_answer_began(caplog) -> None:
    """A handler that fails after its head went out gets its connection cut, never a
    second head written into the body (the errors middleware, whatever the handler)."""
    from notebook_kernels_mixer.errors import BackendTimeout
    from notebook_kernels_mixer.front.middlewares import errors

    async def half(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"y" * 10)
        raise BackendTimeout("local", "timed out in the middle")

    app = web.Application(middlewares=[errors])
    app.router.add_get("/half", half)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        received = await raw_get(f"http://127.0.0.1:{runner.addresses[0][1]}", "/half")
    finally:
        await runner.cleanup()
    assert received.count(b"HTTP/1.") == 1 and received.endswith(b"y" * 10)
    assert [r.getMessage() for r in caplog.records if r.name.endswith("middlewares")] == [
        "GET /half: backend 'local': timed out in the middle; connection to the client aborted"]
    assert not [r for r in caplog.records if r.exc_info]
