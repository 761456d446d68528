"""No token, cookie or Authorization value is ever logged, whatever the flags."""

import logging

from notebook_kernels_mixer.config import LogConfig
from notebook_kernels_mixer.front.redact import redact_headers, redact_text
from tests.unit.conftest import TOKEN, XSRF


def test_redact_helpers() -> None:
    headers = {"Authorization": "Bearer ya29.secret", "Cookie": "_xsrf=abc; session=x",
               "token": "t0k", "X-XSRFToken": "abc", "Accept": "application/json"}
    text = redact_headers(headers)
    for secret in ("ya29.secret", "abc", "t0k", "session=x"):
        assert secret not in text
    assert "Accept: application/json" in text
    assert "secret" not in redact_text("/api/kernels?token=secret&x=1")
    assert "hunter2" not in redact_text('{"password": "hunter2"}')
    assert "abcdefghijkl" not in redact_text("Authorization: Bearer abcdefghijkl")
    assert "zzz" not in redact_text("xx zzz yy", ["zzz"])


async def test_log_all_flags_never_print_secrets(fakes, mixer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    remote = await fakes("remote", token="backend-secret-token")
    local = await fakes("local")
    m = await mixer([("local", local), ("remote", remote)],
                    log=LogConfig(request_headers=True, request_responses=True, response_bodies=True))
    await m.call("GET", "/api/kernelspecs")
    status, k = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    assert status == 201
    await m.call("GET", f"/api/kernels?token={TOKEN}", headers={"Authorization": f"token {TOKEN}"})
    await m.call("GET", "/api/kernels", headers={"token": "wrong-token-value"})
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /api/kernels" in logged and "remote-python3" in logged  # the flags work
    for secret in (TOKEN, XSRF, "backend-secret-token", "wrong-token-value"):
        assert secret not in logged


async def test_requests_ending_in_an_error_reach_the_access_log(fakes, mixer, caplog) -> None:
    """Issue 11 item 6: a 403 from the protection, a 4xx of the mixer's own and a
    backend's error all get their access-log line under --log-all-request-responses,
    and none of them prints a token (the client's or a backend's)."""
    caplog.set_level(logging.INFO)
    local = await fakes("local", token="local-backend-token")
    m = await mixer([("local", local)],
                    log=LogConfig(request_headers=True, request_responses=True, response_bodies=True))
    port = m.url.rsplit(":", 1)[1]
    calls = [
        ("GET", f"/api/kernels?token={TOKEN}x", {"Accept": "*/*"}, 403),  # wrong token
        ("GET", f"/api/kernels?token={TOKEN}", {"Host": f"evil.example:{port}"}, 403),  # Host
        ("POST", f"/api/kernels?token={TOKEN}", {"Content-Type": "application/json"}, 400),
        ("GET", "/api/kernels/0d1a", {"Authorization": f"token {TOKEN}"}, 404),
        ("GET", "/api/kernelspecs/nope-python3", {"token": TOKEN}, 400),
    ]
    for method, path, headers, status in calls:
        got, _ = await m.call(method, path, headers=headers, data=b"{bad")
        assert got == status, path
    lines = [r.getMessage() for r in caplog.records if r.name == "notebook_kernels_mixer.access"]
    for method, path, _, status in calls:
        bare = path.split("?")[0]
        assert any(line.startswith(f"{method} {bare}") and f"-> {status} " in line
                   for line in lines), (method, path, lines)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (TOKEN, "local-backend-token"):
        assert secret not in logged
