"""What of a client's request reaches a backend (``backends.forwarding``): never the
client's token, however its key is spelt; Origin/Referer by SPEC §6."""

import pytest

from notebook_kernels_mixer.backends.forwarding import forwarded_query, origin_headers
from tests.unit.conftest import TOKEN


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
