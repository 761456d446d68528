"""Google credentials through a stand-in ``gcloud``: cached, one refresh for many
callers, refreshed when the remote rejects the token, failures retried with backoff."""

import asyncio
import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest

from notebook_kernels_mixer.backends.credentials import (
    CredentialError,
    GcloudToken,
    parse_expiry,
)
from tests.unit.conftest import Mixer

SCRIPT = """#!/bin/sh
echo run >> "{runs}"
if [ -e "{fail}" ]; then echo "ERROR: (gcloud) You do not currently have an active account" >&2; exit 1; fi
sleep {sleep}
printf '{{"configuration": {{}}, "credential": {{"access_token": "%s", "token_expiry": "%s"}}}}' \
  "$(cat "{token}")" "{expiry}"
echo "GCE_METADATA_HOST=$GCE_METADATA_HOST" > "{env}"
"""


class StandIn:
    def __init__(self, tmp: Path, *, expiry: str = "2099-01-01T00:00:00Z", sleep: float = 0.0):
        self.dir = tmp
        self.path = tmp / "gcloud"
        self.runs = tmp / "runs"
        self.fail = tmp / "fail"
        self.token = tmp / "token"
        self.env = tmp / "env"
        self.token.write_text("token-1")
        self.path.write_text(SCRIPT.format(runs=self.runs, fail=self.fail, token=self.token,
                                           expiry=expiry, sleep=sleep, env=self.env))
        self.path.chmod(self.path.stat().st_mode | stat.S_IEXEC)

    @property
    def run_count(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0


async def test_one_refresh_for_many_concurrent_callers(tmp_path) -> None:
    gcloud = StandIn(tmp_path, sleep=0.2)
    source = GcloudToken("remote", gcloud=str(gcloud.path), metadata_ip="169.254.1.2")
    tokens = await asyncio.gather(*(source.token() for _ in range(100)))
    assert set(tokens) == {"token-1"}
    assert gcloud.run_count == 1
    for _ in range(100):
        assert await source.token() == "token-1"
    assert gcloud.run_count == 1  # cached for the token's lifetime
    assert "GCE_METADATA_HOST=169.254.1.2" in gcloud.env.read_text()
    assert source.state()["ok"] is True and "token" not in json.dumps(source.state()).lower()


async def test_rejected_token_is_refreshed_once(tmp_path) -> None:
    gcloud = StandIn(tmp_path)
    source = GcloudToken("remote", gcloud=str(gcloud.path))
    headers = await source.headers()
    gcloud.token.write_text("token-2")
    assert source.rejected(headers) is True
    assert source.rejected(headers) is True  # a second rejection of the same old token
    assert await source.token() == "token-2"
    assert gcloud.run_count == 2


async def test_short_lived_token_is_refreshed_before_expiry(tmp_path) -> None:
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 4))
    gcloud = StandIn(tmp_path, expiry=expiry)
    source = GcloudToken("remote", gcloud=str(gcloud.path))
    await source.token()
    await source.token()
    assert gcloud.run_count == 1
    await asyncio.sleep(2.2)  # past half the lifetime
    await source.token()
    assert gcloud.run_count == 2


async def test_failure_is_clear_and_retried_with_backoff(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO)
    gcloud = StandIn(tmp_path)
    gcloud.fail.touch()
    source = GcloudToken("remote", gcloud=str(gcloud.path))
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


async def test_mixer_uses_gcloud_once_for_many_requests(tmp_path, fakes, mixer, monkeypatch) -> None:
    gcloud = StandIn(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    remote = await fakes("remote", token="token-1")
    local = await fakes("local")
    m: Mixer = await mixer([("local", local), ("remote", remote.url, {"auth": "gcloud"})],
                           kernelspecs_ttl=0.0)
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
