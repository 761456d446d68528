"""Google credentials through a stand-in ``gcloud``: cached, one refresh for many
callers, refreshed when the remote rejects the token, failures retried with backoff,
waits bounded by the caller's deadline, no gcloud left behind at close, and account
switches in the gcloud configuration picked up by the next request (issue 11 items 4 and 5)."""

import asyncio
import json
import logging
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from notebook_kernels_mixer.backends.credentials import (
    CredentialError,
    GcloudToken,
    GoogleAdcToken,
    parse_expiry,
)
from notebook_kernels_mixer.processes import is_alive
from tests.unit.conftest import Mixer

# The sleep runs as a child of the shell, as real gcloud's Python runs under its
# wrapper script: killing only the shell would leave it behind.
SCRIPT = """#!/bin/sh
echo "$$" >> "{runs}"
if [ -e "{fail}" ]; then echo "ERROR: (gcloud) You do not currently have an active account" >&2; exit 1; fi
sleep "$(cat "{sleep}")" &
echo "$!" >> "{children}"
wait "$!"
printf '{{"configuration": {{}}, "credential": {{"access_token": "%s", "token_expiry": "%s"}}}}' \
  "$(cat "{token}")" "$(cat "{expiry}")"
echo "GCE_METADATA_HOST=$GCE_METADATA_HOST" > "{env}"
"""


class StandIn:
    """A shell gcloud whose token, expiry, delay and failure are files; it also has a
    gcloud configuration directory (``CLOUDSDK_CONFIG``) the tests can change."""

    def __init__(self, tmp: Path, *, expiry: str = "2099-01-01T00:00:00Z", sleep: float = 0.0):
        self.dir = tmp
        self.path = tmp / "gcloud"
        self.runs = tmp / "runs"
        self.children = tmp / "children"
        self.fail = tmp / "fail"
        self.token = tmp / "token"
        self.env = tmp / "env"
        self.sleep_file = tmp / "sleep"
        self.expiry_file = tmp / "expiry"
        self.config = tmp / "config"
        (self.config / "configurations").mkdir(parents=True)
        (self.config / "active_config").write_text("default")
        self.switch_account("alice@example.com", token="token-1")
        self.set_sleep(sleep)
        self.expiry_file.write_text(expiry)
        self.path.write_text(SCRIPT.format(
            runs=self.runs, fail=self.fail, token=self.token, sleep=self.sleep_file,
            expiry=self.expiry_file, env=self.env, children=self.children,
        ))  # fmt: skip
        self.path.chmod(self.path.stat().st_mode | stat.S_IEXEC)

    def set_sleep(self, seconds: float) -> None:
        self.sleep_file.write_text(str(seconds))

    def switch_account(self, account: str, *, token: str, configuration: str = "default") -> None:
        """What ``gcloud config set account`` (plus a login) does to the directory."""
        path = self.config / "configurations" / f"config_{configuration}"
        path.write_text(f"[core]\naccount = {account}\n")
        self.token.write_text(token)

    @property
    def run_count(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0

    def pids(self) -> list[int]:
        """The shells and the sleeps they started, of every run so far."""
        files = (self.runs, self.children)
        return [int(line) for f in files if f.exists() for line in f.read_text().split()]


@pytest.fixture
def gcloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandIn:
    standin = StandIn(tmp_path)
    # the user's real gcloud configuration must not count
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(standin.config))
    monkeypatch.delenv("CLOUDSDK_ACTIVE_CONFIG_NAME", raising=False)
    return standin


def source_for(gcloud: StandIn, *, check_interval: float = 0.0) -> GcloudToken:
    source = GcloudToken("remote", gcloud=str(gcloud.path))
    source.watch.interval = check_interval
    return source


async def eventually(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def release_sleep(gcloud: StandIn, run: int) -> None:
    """End the sleep of gcloud's ``run``-th run (a process it started, by PID): that
    run then prints its token."""
    def sleeps() -> list[str]:
        return gcloud.children.read_text().split() if gcloud.children.exists() else []

    await eventually(lambda: len(sleeps()) >= run)
    os.kill(int(sleeps()[run - 1]), signal.SIGTERM)


def in_seconds(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


async def test_one_refresh_for_many_concurrent_callers(gcloud: StandIn) -> None:
    gcloud.set_sleep(0.2)
    source = GcloudToken("remote", gcloud=str(gcloud.path), metadata_ip="169.254.1.2")
    tokens = await asyncio.gather(*(source.token() for _ in range(100)))
    assert set(tokens) == {"token-1"}
    assert gcloud.run_count == 1
    for _ in range(100):
        assert await source.token() == "token-1"
    assert gcloud.run_count == 1  # cached for the token's lifetime
    assert "GCE_METADATA_HOST=169.254.1.2" in gcloud.env.read_text()
    assert source.state()["ok"] is True and "token" not in json.dumps(source.state()).lower()


async def test_rejected_token_is_refreshed_once(gcloud: StandIn) -> None:
    source = source_for(gcloud)
    headers = await source.headers()
    gcloud.token.write_text("token-2")
    assert source.rejected(headers) is True
    assert source.rejected(headers) is True  # a second rejection of the same old token
    assert await source.token() == "token-2"
    assert gcloud.run_count == 2


async def test_still_valid_token_is_served_while_one_refresh_runs(gcloud: StandIn) -> None:
    gcloud.expiry_file.write_text(in_seconds(6))  # refresh due after half of it, ~3 s
    source = source_for(gcloud)
    assert await source.token() == "token-1"
    gcloud.set_sleep(60)  # the refresh runs until the test ends its sleep
    gcloud.token.write_text("token-2")
    gcloud.expiry_file.write_text("2099-01-01T00:00:00Z")
    await asyncio.sleep(3.1)  # past the refresh time, before the expiry
    tokens = await asyncio.gather(*(source.headers(timeout=5) for _ in range(20)))
    assert {h["Authorization"] for h in tokens} == {"Bearer token-1"}
    # answered while the refresh was still running: nobody waited for it
    assert source.refreshes == 1
    await release_sleep(gcloud, run=2)
    await eventually(lambda: source.refreshes == 2)
    assert await source.token() == "token-2"
    assert gcloud.run_count == 2  # one background refresh for all twenty callers


async def test_expired_token_is_not_served(gcloud: StandIn) -> None:
    gcloud.expiry_file.write_text(in_seconds(2))
    source = source_for(gcloud)
    await source.token()
    gcloud.token.write_text("token-2")
    await asyncio.sleep(2.1)
    assert await source.token() == "token-2"


async def test_wait_is_bounded_and_the_refresh_goes_on(gcloud: StandIn) -> None:
    gcloud.set_sleep(60)  # gcloud answers when the test ends its sleep
    source = source_for(gcloud)
    with pytest.raises(CredentialError) as info:
        # 30 s: a bound on the test, far from the caller's 0.3 s and from gcloud's 60 s
        await asyncio.wait_for(source.headers(timeout=0.3), 30)
    message = str(info.value)
    assert "gcloud did not produce an access token within 0.3s" in message
    assert "'remote'" in message and "token-1" not in message
    # the run the first caller gave up on serves the next one: no second gcloud
    next_caller = asyncio.ensure_future(source.headers(timeout=30))
    await release_sleep(gcloud, run=1)
    assert await next_caller == {"Authorization": "Bearer token-1"}
    assert gcloud.run_count == 1
    assert source.state()["ok"] is True  # a caller's deadline is not a source failure


async def test_adc_wait_is_bounded_too() -> None:
    class SlowAdc(GoogleAdcToken):
        def _fetch_blocking(self) -> tuple[str, float | None]:
            time.sleep(0.8)  # google-auth's blocking HTTP, in a thread
            return "adc-token", None

    source = SlowAdc("remote")
    with pytest.raises(CredentialError, match="Application Default Credentials did not produce"):
        await source.headers(timeout=0.2)
    assert await source.headers(timeout=5) == {"Authorization": "Bearer adc-token"}
    assert source.refreshes == 1


async def test_close_kills_a_running_gcloud_and_its_children(gcloud: StandIn) -> None:
    gcloud.set_sleep(30)
    source = source_for(gcloud)
    with pytest.raises(CredentialError):
        await source.headers(timeout=0.2)
    await eventually(lambda: len(gcloud.pids()) == 2)  # the shell and its sleep
    pids = gcloud.pids()
    assert all(is_alive(pid) for pid in pids)
    await asyncio.wait_for(source.close(), 5)
    await eventually(lambda: not any(is_alive(pid) for pid in pids), timeout=2)
    with pytest.raises(CredentialError, match="closed"):
        await source.token()  # and no new gcloud after close
    assert gcloud.run_count == 1


async def test_short_lived_token_is_refreshed_before_expiry(gcloud: StandIn) -> None:
    gcloud.expiry_file.write_text(in_seconds(4))
    source = source_for(gcloud)
    await source.token()
    await source.token()
    assert gcloud.run_count == 1
    await asyncio.sleep(2.2)  # past half the lifetime
    await source.token()
    await eventually(lambda: source.refreshes == 2)
    assert gcloud.run_count == 2


CHANGES = {
    "gcloud config set account": lambda g: g.switch_account("bob@example.com", token="token-2"),
    "gcloud config configurations activate": lambda g: (
        g.switch_account("carol@example.com", token="token-2", configuration="work"),
        (g.config / "active_config").write_text("work"),
    ),
    "gcloud auth login (credential database)": lambda g: (
        (g.config / "credentials.db").write_bytes(b"new refresh token"),
        g.token.write_text("token-2"),
    ),
    "gcloud token cache": lambda g: (
        (g.config / "access_tokens.db").write_bytes(b"new access token"),
        g.token.write_text("token-2"),
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
async def test_account_switch_is_picked_up_by_the_next_request(gcloud: StandIn, change: str) -> None:
    source = source_for(gcloud)
    for _ in range(50):  # the configuration is checked every time (interval 0) …
        assert await source.token() == "token-1"
    assert gcloud.run_count == 1  # … and unchanged: no extra gcloud run
    CHANGES[change](gcloud)
    assert await source.token() == "token-2"
    assert gcloud.run_count == 2
    for _ in range(20):
        assert await source.token() == "token-2"
    assert gcloud.run_count == 2


async def test_configuration_is_checked_at_most_once_per_interval(gcloud: StandIn) -> None:
    source = source_for(gcloud, check_interval=0.5)
    assert await source.token() == "token-1"
    gcloud.switch_account("bob@example.com", token="token-2")
    assert await source.token() == "token-1"  # within the interval: no stat, no run
    await asyncio.sleep(0.55)
    assert await source.token() == "token-2"
    assert gcloud.run_count == 2


async def test_switch_while_gcloud_runs_gets_the_new_identity(gcloud: StandIn) -> None:
    gcloud.set_sleep(0.5)
    source = source_for(gcloud)
    pending = asyncio.ensure_future(source.token())
    await eventually(lambda: gcloud.run_count == 1)
    gcloud.switch_account("bob@example.com", token="token-2")  # the run may print either
    assert await pending == "token-2"
    assert gcloud.run_count == 2
    assert await source.token() == "token-2" and gcloud.run_count == 2


async def test_login_after_a_failure_skips_the_backoff(gcloud: StandIn) -> None:
    gcloud.fail.touch()
    source = source_for(gcloud)
    source.backoff_initial = source._backoff = 30.0
    with pytest.raises(CredentialError, match="active account"):
        await source.token()
    os.remove(gcloud.fail)
    with pytest.raises(CredentialError):
        await source.token()  # backing off: no run
    assert gcloud.run_count == 1
    gcloud.switch_account("alice@example.com", token="token-2")  # gcloud auth login
    assert await source.token() == "token-2"


async def test_failure_is_clear_and_retried_with_backoff(gcloud: StandIn, caplog) -> None:
    caplog.set_level(logging.INFO)
    gcloud.fail.touch()
    source = source_for(gcloud)
    source.backoff_initial = source._backoff = 0.3
    with pytest.raises(CredentialError) as info:
        await source.token()
    assert "You do not currently have an active account" in str(info.value)
    assert "'remote'" in str(info.value)
    for _ in range(20):  # within the backoff: no new gcloud run, same error at once
        with pytest.raises(CredentialError):
            await source.token()
    assert gcloud.run_count == 1
    await asyncio.sleep(0.35)
    with pytest.raises(CredentialError):
        await source.token()
    assert gcloud.run_count == 2
    errors = [r for r in caplog.records if "cannot get credentials" in r.getMessage()]
    assert len(errors) == 1  # logged once per state change, not per attempt
    os.remove(gcloud.fail)
    await asyncio.sleep(0.7)
    assert await source.token() == "token-1"
    assert any("working again" in r.getMessage() for r in caplog.records)


async def test_missing_gcloud_binary(tmp_path) -> None:
    source = GcloudToken("remote", gcloud=str(tmp_path / "nope"))
    with pytest.raises(CredentialError, match="cannot run"):
        await source.token()


def test_parse_expiry() -> None:
    assert parse_expiry("2030-01-01T00:00:00Z") == 1893456000.0
    assert parse_expiry("garbage") is None and parse_expiry(None) is None


async def test_mixer_uses_gcloud_once_for_many_requests(gcloud: StandIn, fakes, mixer, monkeypatch) -> None:
    monkeypatch.setenv("PATH", f"{gcloud.dir}:{os.environ['PATH']}")
    remote = await fakes("remote", token="token-1")
    local = await fakes("local")
    m: Mixer = await mixer(
        [("local", local), ("remote", remote.url, {"auth": "gcloud"})], kernelspecs_ttl=0.0
    )
    results = await asyncio.gather(*(m.call("GET", "/api/kernelspecs") for _ in range(50)))
    assert all(status == 200 and "remote-python3" in body["kernelspecs"] for status, body in results)
    status, kernel = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    assert status == 201
    assert gcloud.run_count == 1
    # rotate: the remote stops accepting the old token; requests keep succeeding
    gcloud.token.write_text("token-2")
    remote.token = "token-2"
    status, got = await m.call("GET", f"/api/kernels/{kernel['id']}")
    assert status == 200
    assert gcloud.run_count == 2
    # gcloud failing: clear error for the remote, local unaffected
    gcloud.fail.touch()
    remote.token = "token-3"
    status, err = await m.call("POST", "/api/kernels", json={"name": "remote-python3"})
    assert status == 503 and "credentials" in err["message"] and "remote" in err["message"]
    status, k = await m.call("POST", "/api/kernels", json={"name": "local-python3"})
    assert status == 201


async def test_a_token_the_refresh_gave_back_is_not_refreshed_again(gcloud: StandIn) -> None:
    source = source_for(gcloud)
    source.rejection_interval = 0.0  # the once-per-token rule alone
    headers = await source.headers()
    assert source.rejected(headers) is True  # first refusal: one refresh
    again = await source.headers()
    assert again == headers and gcloud.run_count == 2  # gcloud gave the same token back
    assert source.rejected(again) is False  # refused again: the answer is handed on
    assert await source.headers() == headers and gcloud.run_count == 2


async def test_a_refusal_soon_after_a_forced_refresh_forces_none(gcloud: StandIn) -> None:
    """A source that issues a new token on every run, behind a backend that refuses
    them all, does not run on every request."""
    source = source_for(gcloud)
    for i in range(10):
        headers = await source.headers()
        gcloud.token.write_text(f"token-new-{i}")
        source.rejected(headers)
    assert gcloud.run_count == 2


async def test_a_token_that_was_taken_is_refreshed_when_refused_later(gcloud: StandIn) -> None:
    """Rotations in quick succession (each new token worked before the next one)."""
    source = source_for(gcloud)
    for i in range(3):
        headers = await source.headers()
        source.accepted(headers)
        gcloud.token.write_text(f"token-rotated-{i}")
        assert source.rejected(headers) is True
        assert await source.token() == f"token-rotated-{i}"
    assert gcloud.run_count == 4


async def test_a_backend_refusing_every_token_runs_gcloud_at_most_twice(
        gcloud: StandIn, fakes, mixer, monkeypatch) -> None:
    monkeypatch.setenv("PATH", f"{gcloud.dir}:{os.environ['PATH']}")
    remote = await fakes("remote", token="a-token-gcloud-never-gives")
    local = await fakes("local")
    m: Mixer = await mixer([("local", local), ("remote", remote.url, {"auth": "gcloud"})])
    for _ in range(10):
        status, body = await m.call("GET", "/api/kernelspecs/remote-python3")
        assert status == 403 and body == {"message": "Forbidden"}  # the backend's answer
    assert gcloud.run_count <= 2
