"""Protection (SPEC §6): token, XSRF, websocket Origin, bad input — all answered
before any backend is contacted, and the mixer keeps serving afterwards."""

import aiohttp
import pytest

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


@pytest.mark.parametrize(
    "xsrf",
    [{}, {"Cookie": f"_xsrf={XSRF}"}, {"X-XSRFToken": XSRF},
     {"Cookie": "_xsrf=a", "X-XSRFToken": "b"}],
)
async def test_unsafe_methods_need_matching_xsrf(fakes, mixer, xsrf) -> None:
    local = await fakes("local")
    m = await mixer([("local", local)])
    for method, path in (("POST", "/api/kernels"), ("PATCH", "/api/sessions/abc"),
                         ("DELETE", "/api/kernels/abc"), ("PUT", "/api/contents/x")):
        status, body = await m.call(method, path, headers={"token": TOKEN, **xsrf}, json={})
        assert status == 403 and "_xsrf" in body["message"]
    assert local.seen == []


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
        (None, True),
        ("http://localhost:8888", True),
        ("http://127.0.0.1:9", True),
        ("https://evil.example", False),
        ("null", False),
    ],
)
async def test_websocket_origin_check(fakes, mixer, origin, allowed) -> None:
    local = await fakes("local")
    kernel = local._new_kernel("python3")
    m = await mixer([("local", local)])
    headers = {"token": TOKEN}
    if origin:
        headers["Origin"] = origin
    url = m.url.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels"
    if allowed:
        async with m.session.ws_connect(url, headers=headers) as ws:
            await ws.send_str("hi")
            assert (await ws.receive(timeout=5)).data == "hi"
    else:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await m.session.ws_connect(url, headers=headers)
        assert info.value.status == 403
        assert not any(s.path.endswith("/channels") for s in local.seen)


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
