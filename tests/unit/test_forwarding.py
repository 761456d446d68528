"""What of a client's request reaches a backend (``backends.forwarding``): never the
client's token, however its key is spelt; Origin/Referer by SPEC §6."""

import pytest
from aiohttp import WSMsgType

from notebook_kernels_mixer.backends.forwarding import forwarded_query, origin_headers
from tests.unit.conftest import TOKEN
from tests.unit.conftest import two_backends as two


@pytest.mark.parametrize(
    "query,kept",
    [
        ("", ""),
        ("session_id=abc", "session_id=abc"),
        ("session_id=a%2Fb&x=1+2", "session_id=a%2Fb&x=1+2"),  # untouched, byte for byte
        ("token=T", ""),
        ("session_id=abc&token=T", "session_id=abc"),
        ("session_id=abc&%74oken=T", "session_id=abc"),  # yarl reads %74oken as token
        ("%74%6F%6B%65%6E=T&a=1", "a=1"),
        ("access_token=T&a=1&token=&b", "a=1&b"),
        ("tokens=1&my_token=2", "tokens=1&my_token=2"),  # other keys stay
    ],
)
def test_client_credentials_are_removed_from_queries(query: str, kept: str) -> None:
    assert forwarded_query(query) == kept


async def test_a_percent_encoded_token_key_never_reaches_a_remote(fakes, mixer) -> None:
    local, remote = await fakes("local"), await fakes("remote")
    m = await mixer([("local", local), ("remote", remote)])
    kernel = remote._new_kernel("python3")
    url = (m.url.replace("http", "ws")
           + f"/api/kernels/{kernel['id']}/channels?session_id=abc&%74oken={TOKEN}")
    async with m.session.ws_connect(url, headers={}) as ws:  # admitted by the encoded key
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "hi"
    status, _ = await m.call("GET", f"/api/kernels/{kernel['id']}?%74oken={TOKEN}", headers={})
    assert status == 200
    (socket,) = [s for s in remote.seen if s.path.endswith("/channels")]
    assert socket.query == "session_id=abc"
    assert all(TOKEN not in s.query and TOKEN not in str(s.headers) for s in remote.seen)


ORIGINS = dict(scheme="http", mixer_host="127.0.0.1:8081", external_hostname=None,
               backend_origin="http://127.0.0.1:9000")


@pytest.mark.parametrize("local", [True, False])
def test_the_mixers_own_origin_becomes_the_backends(local: bool) -> None:
    client = {"Origin": "http://127.0.0.1:8081", "Referer": f"http://127.0.0.1:8081/lab?token={TOKEN}"}
    assert origin_headers(client, **ORIGINS, local=local) == {
        "Origin": "http://127.0.0.1:9000", "Referer": "http://127.0.0.1:9000/"}


def test_a_foreign_origin_reaches_the_local_server_as_it_is_and_no_remote() -> None:
    client = {"Origin": "https://lab.example.org", "Referer": f"https://lab.example.org/x?token={TOKEN}"}
    assert origin_headers(client, **ORIGINS, local=True) == {
        "Origin": "https://lab.example.org", "Referer": "https://lab.example.org/"}
    assert origin_headers(client, **ORIGINS, local=False) == {}


async def test_the_clients_token_reaches_no_backend(fakes, mixer) -> None:
    local, remote, m = await two(fakes, mixer)
    referer = {"Referer": f"{m.url}/lab/tree/nb.ipynb?token={TOKEN}", "Origin": m.url}
    q = f"?token={TOKEN}"
    status, k = await m.call("POST", "/api/kernels" + q, json={"name": "remote-python3"},
                             headers=m.headers(**referer))
    assert status == 201
    for path in ("/api/kernels", f"/api/kernels/{k['id']}", "/api/kernelspecs", "/api/sessions",
                 "/lab/tree/x", "/api/contents"):
        status, _ = await m.call("GET", path + q, headers={**referer, "Authorization": f"token {TOKEN}"})
        assert status in (200, 404), path
    ws_url = m.url.replace("http", "ws") + f"/api/kernels/{k['id']}/channels?session_id=s1&token={TOKEN}"
    async with m.session.ws_connect(ws_url, headers=referer) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).type is WSMsgType.TEXT
    seen = local.seen + remote.seen
    assert any(s.path.endswith("/channels") for s in remote.seen)
    assert any(s.path == "/lab/tree/x" for s in local.seen)
    for s in seen:
        assert TOKEN not in s.query, (s.method, s.path, s.query)
        assert TOKEN.encode() not in s.body, (s.method, s.path)
        for name, value in s.headers.items():
            assert TOKEN not in value, (s.method, s.path, name, value)
    # what is kept: the rest of the query, and a Referer reduced to the backend's origin
    channels = next(s for s in remote.seen if s.path.endswith("/channels"))
    assert channels.query == "session_id=s1"
    assert channels.headers.get("Referer") == remote.url
