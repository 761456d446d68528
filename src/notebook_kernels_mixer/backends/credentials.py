"""Credentials for backends: static tokens and refreshing Google access tokens.

Google tokens come from ``gcloud config config-helper`` (as the Go original does) or
from Application Default Credentials (as Google's Jupyter extension does). Either way
the token is cached until shortly before it expires, one refresh serves every request
that waits for it, and the work runs off the event loop (a subprocess, or a thread for
google-auth's blocking HTTP).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from datetime import datetime

log = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class CredentialError(Exception):
    """No credential could be had; the message says why (and holds no secret)."""


class Credentials:
    """Adds authentication headers to backend requests. The base class adds none."""

    kind = "none"

    async def headers(self) -> dict[str, str]:
        return {}

    def rejected(self, headers: Mapping[str, str]) -> bool:
        """The backend refused ``headers`` (401/403). Returns True if a retry with
        fresh credentials could help."""
        return False

    def state(self) -> dict[str, object]:
        return {"kind": self.kind, "ok": True}

    async def close(self) -> None:
        return None


class StaticToken(Credentials):
    """A Jupyter token sent as ``Authorization: token …`` (jupyter_server, gateways)."""

    kind = "token"

    def __init__(self, token: str) -> None:
        self._headers = {"Authorization": f"token {token}"}

    async def headers(self) -> dict[str, str]:
        return self._headers


class RefreshingToken(Credentials):
    """A bearer token fetched by ``_fetch`` and cached until near its expiry.

    Concurrent callers share one refresh. A failed refresh is retried with exponential
    backoff; callers in between get the last error at once instead of each starting a
    new attempt. State changes (ok → failing → ok) are logged once, not per request.
    """

    #: Refresh this long before expiry (or at half the lifetime, if that is shorter).
    margin = 60.0
    #: Lifetime assumed when the source gives no expiry.
    default_lifetime = 300.0
    backoff_initial = 1.0
    backoff_max = 30.0

    def __init__(self, backend_name: str) -> None:
        self._backend = backend_name
        self._token: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._task: asyncio.Task[str] | None = None
        self._error: str | None = None
        self._retry_at = 0.0
        self._backoff = self.backoff_initial
        self.refreshes = 0

    async def _fetch(self) -> tuple[str, float | None]:
        """Return (access token, expiry as epoch seconds or None)."""
        raise NotImplementedError

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token()}"}

    async def token(self) -> str:
        now = time.time()
        if self._token is not None and now < self._refresh_at:
            return self._token
        if self._task is None:
            if self._error is not None and now < self._retry_at:
                if self._token is not None and now < self._expires_at:
                    return self._token  # still valid; the next retry comes later
                raise CredentialError(self._error)
            self._task = asyncio.create_task(self._refresh())
        # shield: a caller that gives up (timeout, disconnect) must not cancel the
        # refresh the other callers are waiting for.
        return await asyncio.shield(self._task)

    async def _refresh(self) -> str:
        try:
            token, expiry = await self._fetch()
        except Exception as exc:
            message = f"cannot get credentials for backend {self._backend!r}: {exc}"
            if self._error is None:
                log.error("%s (retrying with backoff)", message)
            self._error = message
            self._retry_at = time.time() + self._backoff
            self._backoff = min(self._backoff * 2, self.backoff_max)
            raise CredentialError(message) from None
        finally:
            self._task = None
        now = time.time()
        expires_at = expiry if expiry is not None else now + self.default_lifetime
        lifetime = max(expires_at - now, 0.0)
        self._token = token
        self._expires_at = expires_at
        self._refresh_at = now + max(lifetime - min(self.margin, lifetime / 2), 0.0)
        if self._error is not None:
            log.info("credentials for backend %r are working again", self._backend)
        self._error = None
        self._backoff = self.backoff_initial
        self.refreshes += 1
        return token

    def rejected(self, headers: Mapping[str, str]) -> bool:
        used = headers.get("Authorization", "")
        if self._token is not None and used == f"Bearer {self._token}":
            # Only the first request to see the old token rejected forces a refresh;
            # the others just retry with whatever is current by then.
            self._token = None
            self._refresh_at = 0.0
        return True

    def state(self) -> dict[str, object]:
        now = time.time()
        state: dict[str, object] = {
            "kind": self.kind,
            "ok": self._error is None,
            "refreshes": self.refreshes,
        }
        if self._token is not None:
            state["expires_in"] = round(self._expires_at - now, 1)
        if self._error is not None:
            state["error"] = self._error
        return state

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


def metadata_env(ip: str | None) -> dict[str, str]:
    """Environment that points Google's libraries at another metadata server."""
    if not ip:
        return {}
    return {"GCE_METADATA_HOST": ip, "GCE_METADATA_ROOT": ip, "GCE_METADATA_IP": ip}


def parse_expiry(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class GcloudToken(RefreshingToken):
    """``gcloud config config-helper --format=json`` → ``.credential.access_token``."""

    kind = "gcloud"
    command_timeout = 60.0

    def __init__(self, backend_name: str, *, gcloud: str = "gcloud", metadata_ip: str | None = None):
        super().__init__(backend_name)
        self._gcloud = gcloud
        self._env = {**os.environ, **metadata_env(metadata_ip)}

    async def _fetch(self) -> tuple[str, float | None]:
        try:
            proc = await asyncio.create_subprocess_exec(
                self._gcloud, "config", "config-helper", "--format=json",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
            )
        except OSError as exc:
            raise CredentialError(f"cannot run {self._gcloud}: {exc.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.command_timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise CredentialError(f"gcloud did not answer within {self.command_timeout:.0f}s") from None
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip().splitlines()
            last = detail[-1][:300] if detail else "no message"
            raise CredentialError(f"gcloud exited with status {proc.returncode}: {last}")
        try:
            credential = json.loads(out)["credential"]
            token = credential["access_token"]
        except (ValueError, KeyError, TypeError):
            raise CredentialError("gcloud printed no credential.access_token") from None
        if not isinstance(token, str) or not token:
            raise CredentialError("gcloud printed an empty access token")
        return token, parse_expiry(credential.get("token_expiry"))


class GoogleAdcToken(RefreshingToken):
    """Application Default Credentials with the cloud-platform scope (google-auth)."""

    kind = "google-adc"

    def __init__(self, backend_name: str, *, metadata_ip: str | None = None) -> None:
        super().__init__(backend_name)
        self._metadata_ip = metadata_ip
        self._credentials: object | None = None

    def _fetch_blocking(self) -> tuple[str, float | None]:
        # google-auth reads the metadata host from the environment at import time.
        for key, value in metadata_env(self._metadata_ip).items():
            os.environ.setdefault(key, value)
        import google.auth
        import google.auth.exceptions
        import google.auth.transport.requests

        try:
            if self._credentials is None:
                self._credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            creds = self._credentials
            creds.refresh(google.auth.transport.requests.Request())  # type: ignore[attr-defined]
        except google.auth.exceptions.GoogleAuthError as exc:
            raise CredentialError(f"Application Default Credentials: {exc}") from None
        expiry = creds.expiry  # type: ignore[attr-defined]
        # google-auth's expiry is a naive UTC datetime.
        epoch = float(calendar.timegm(expiry.timetuple())) if expiry else None
        return creds.token, epoch  # type: ignore[attr-defined]

    async def _fetch(self) -> tuple[str, float | None]:
        return await asyncio.to_thread(self._fetch_blocking)
