"""Credentials for backends: static tokens and refreshing Google access tokens.

Google tokens come from ``gcloud config config-helper`` (as the Go original does) or
from Application Default Credentials (as Google's Jupyter extension does). Either way
the token is cached until shortly before it expires, one refresh serves every request
that waits for it, and the work runs off the event loop (a subprocess, or a thread for
google-auth's blocking HTTP).

A caller waits for a refresh at most as long as its request may take (issue 11 item 4);
a token that is due for refresh but still valid is served at once while one refresh
runs in the background. gcloud is run again when its configuration changes, so that an
account switch takes effect on the next request (issue 11 item 5, SPEC §5).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class CredentialError(Exception):
    """No credential could be had; the message says why (and holds no secret)."""


class Credentials:
    """Adds authentication headers to backend requests. The base class adds none."""

    kind = "none"

    async def headers(self, timeout: float | None = None) -> dict[str, str]:
        """Headers for one request; ``timeout`` bounds the wait for a credential."""
        return {}

    def rejected(self, headers: Mapping[str, str]) -> bool:
        """The backend refused ``headers`` (401/403). Returns True if a retry with
        fresh credentials could help."""
        return False

    def accepted(self, headers: Mapping[str, str]) -> None:
        """The backend answered ``headers`` with something other than 401/403."""

    def state(self) -> dict[str, object]:
        return {"kind": self.kind, "ok": True}

    async def close(self) -> None:
        return None


class StaticToken(Credentials):
    """A Jupyter token sent as ``Authorization: token …`` (jupyter_server, gateways)."""

    kind = "token"

    def __init__(self, token: str) -> None:
        self._headers = {"Authorization": f"token {token}"}

    async def headers(self, timeout: float | None = None) -> dict[str, str]:
        return self._headers


def _consume(task: asyncio.Future[object]) -> None:
    """Mark a refresh's outcome as seen: nobody may be waiting for a background one."""
    if not task.cancelled():
        task.exception()


class RefreshingToken(Credentials):
    """A bearer token fetched by ``_fetch`` and cached until near its expiry.

    Concurrent callers share one refresh, which is shielded from them: a caller that
    gives up (its deadline, a disconnect) leaves it running for the others. A failed
    refresh is retried with exponential backoff; callers in between get the last error
    at once instead of each starting a new attempt. State changes (ok → failing → ok)
    are logged once, not per request.
    """

    #: Refresh this long before expiry (or at half the lifetime, if that is shorter).
    margin = 60.0
    #: Lifetime assumed when the source gives no expiry.
    default_lifetime = 300.0
    backoff_initial = 1.0
    backoff_max = 30.0
    #: A token that a refusal made us fetch, refused in turn before any backend took
    #: it, forces no other refresh for this long (``rejected``).
    rejection_interval = 30.0
    #: Named in errors: what failed to produce a token.
    source = "the credential source"

    def __init__(self, backend_name: str) -> None:
        self._backend = backend_name
        self._token: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._task: asyncio.Task[str] | None = None
        self._error: str | None = None
        self._retry_at = 0.0
        self._backoff = self.backoff_initial
        #: Bumped when the source's configuration changes: a fetch that started
        #: before the change may carry the old identity (see ``_refresh``).
        self._generation = 0
        self._closed = False
        self.refreshes = 0
        #: The last Authorization whose refusal forced a refresh, and when (``rejected``).
        self._rejected: str | None = None
        self._forced_at = float("-inf")
        #: A refresh forced by a refusal is under way; the token it gives is unproven
        #: (no backend took it yet) until ``accepted``.
        self._forcing = False
        self._unproven: str | None = None

    async def _fetch(self) -> tuple[str, float | None]:
        """Return (access token, expiry as epoch seconds or None)."""
        raise NotImplementedError

    def _source_changed(self) -> bool:
        """Whether the source's configuration changed since the last fetch (cheap)."""
        return False

    async def headers(self, timeout: float | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token(timeout)}"}

    async def token(self, timeout: float | None = None) -> str:
        """The current token, waiting at most ``timeout`` seconds for a refresh."""
        if self._source_changed():
            self._invalidate()
        now, token = time.time(), self._token
        if token is not None and now < self._refresh_at:
            return token
        usable = token if token is not None and now < self._expires_at else None
        if self._task is None:
            if self._error is not None and now < self._retry_at:
                if usable is not None:
                    return usable  # still valid; the next attempt comes after the backoff
                raise CredentialError(self._error)
            self._start_refresh()
        if usable is not None:
            return usable  # still valid; the refresh runs in the background
        return await self._wait(timeout)

    def _invalidate(self) -> None:
        """Forget the token (it may belong to another account now) and any backoff."""
        log.info("credentials for backend %r changed; fetching a new token", self._backend)
        self._generation += 1
        self._token = None
        self._refresh_at = self._retry_at = 0.0
        self._backoff = self.backoff_initial
        self._forcing, self._unproven = False, None  # a new identity: no refusal counts

    def _start_refresh(self) -> None:
        if self._closed:
            raise CredentialError(f"credentials for backend {self._backend!r} are closed")
        task = asyncio.get_running_loop().create_task(self._refresh())
        task.add_done_callback(_consume)
        self._task = task

    async def _wait(self, timeout: float | None) -> str:
        assert self._task is not None
        try:
            # shield: a caller that gives up must not cancel the refresh others wait for.
            return await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            raise CredentialError(
                f"cannot get credentials for backend {self._backend!r}: {self.source} did "
                f"not produce an access token within {round(max(timeout or 0.0, 0.0), 1):g}s"
            ) from None

    async def _refresh(self) -> str:
        try:
            # A fetch that overlapped a configuration change runs once more, so the
            # token is the new identity's; twice at most, so a source that rewrites its
            # own configuration on every run cannot loop.
            for _ in range(2):
                generation = self._generation
                token, expiry = await self._fetch()
                if generation == self._generation:
                    break
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
        self._store(token, expiry)
        return token

    def _store(self, token: str, expiry: float | None) -> None:
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
        if self._forcing:
            self._forcing, self._unproven = False, f"Bearer {token}"

    def rejected(self, headers: Mapping[str, str]) -> bool:
        """A 401/403 for ``headers``: retry if a newer token is (or is being) had;
        else force a refresh, at most once per token, and not for a token that such a
        refresh gave moments ago and no backend has taken since (a source that issues
        a new token on every run, behind a backend that refuses this identity whatever
        the token, must not run on every request). Otherwise (False) the backend's
        answer is handed on."""
        used = headers.get("Authorization", "")
        if self._token is None:
            return True  # a refresh is due anyway (refused, or a new identity): one for all
        if used != f"Bearer {self._token}":
            return True  # refreshed since this request took its token
        now = time.monotonic()
        if used == self._rejected:
            return False  # the refresh gave the refused token back
        if used == self._unproven and now - self._forced_at < self.rejection_interval:
            return False  # fetched because of a refusal, refused at once: no use again
        self._rejected, self._forced_at, self._forcing = used, now, True
        self._token = None
        self._refresh_at = 0.0
        return True

    def accepted(self, headers: Mapping[str, str]) -> None:
        if self._unproven is not None and headers.get("Authorization") == self._unproven:
            self._unproven = None  # the forced refresh helped: a later refusal is news

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
        """Stop a running refresh (a gcloud run is killed) and refuse new ones."""
        self._closed = True
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


def gcloud_config_dir(env: Mapping[str, str]) -> Path:
    """Where gcloud keeps its configuration: ``CLOUDSDK_CONFIG`` or ``~/.config/gcloud``."""
    if env.get("CLOUDSDK_CONFIG"):
        return Path(env["CLOUDSDK_CONFIG"])
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".config" / "gcloud"


Signature = tuple[tuple[int, int, int] | None, ...]


class GcloudConfigWatch:
    """Notices a change of the gcloud configuration by the files' mtimes.

    ``gcloud config set account``, ``gcloud auth login`` and switching configurations
    write one of these files. A check stats a handful of files, at most once per
    ``interval``, on the event loop (a few microseconds).
    """

    interval = 1.0

    def __init__(self, directory: Path, active_name: str | None = None) -> None:
        self.directory = directory
        self._fixed_name = active_name  # CLOUDSDK_ACTIVE_CONFIG_NAME wins over the file
        self._active: tuple[tuple[int, int, int] | None, str] = (None, "default")
        self._baseline: Signature | None = None
        self._checked_at = float("-inf")

    def _active_name(self) -> str:
        """The active configuration's name; the small file is read only when it changed."""
        if self._fixed_name:
            return self._fixed_name
        path = self.directory / "active_config"
        stamp = _stamp(path)
        if stamp != self._active[0]:
            try:
                name = path.read_text(encoding="utf-8").strip() or "default"
            except (OSError, UnicodeDecodeError):
                name = "default"
            self._active = (stamp, name)
        return self._active[1]

    def snapshot(self) -> Signature:
        d = self.directory
        names = ("active_config", "configurations", f"configurations/config_{self._active_name()}",
                 "credentials.db", "access_tokens.db", "config_sentinel")  # fmt: skip
        return tuple(_stamp(d / name) for name in names)

    def mark(self, snapshot: Signature) -> None:
        """Record ``snapshot`` as what the current token was fetched under."""
        self._baseline = snapshot
        self._checked_at = time.monotonic()

    def changed(self) -> bool:
        """Whether the files changed since ``mark`` (checked at most once per interval)."""
        now = time.monotonic()
        if self._baseline is None or now - self._checked_at < self.interval:
            return False
        self._checked_at = now
        current = self.snapshot()
        if current == self._baseline:
            return False
        self._baseline = current
        return True


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill gcloud and whatever it started (its own process group), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


class GcloudToken(RefreshingToken):
    """``gcloud config config-helper --format=json`` → ``.credential.access_token``."""

    kind = "gcloud"
    source = "gcloud"
    #: Bound of one gcloud run (it keeps going for other callers past a request's deadline).
    command_timeout = 60.0

    def __init__(self, backend_name: str, *, gcloud: str = "gcloud", metadata_ip: str | None = None):
        super().__init__(backend_name)
        self._gcloud = gcloud
        self._env = {**os.environ, **metadata_env(metadata_ip)}
        self.watch = GcloudConfigWatch(
            gcloud_config_dir(self._env), self._env.get("CLOUDSDK_ACTIVE_CONFIG_NAME")
        )

    def _source_changed(self) -> bool:
        return self.watch.changed()

    async def _fetch(self) -> tuple[str, float | None]:
        before = self.watch.snapshot()
        try:
            return await self._run()
        finally:
            after = self.watch.snapshot()
            self.watch.mark(after)
            if after != before:
                # Changed while gcloud ran: a switch, or gcloud's own token cache.
                # Either way ``_refresh`` runs it once more, and this is the baseline.
                self._generation += 1

    async def _run(self) -> tuple[str, float | None]:
        try:
            proc = await asyncio.create_subprocess_exec(
                self._gcloud, "config", "config-helper", "--format=json",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                start_new_session=True,  # its own process group: killed whole (_kill_group)
            )  # fmt: skip
        except OSError as exc:
            raise CredentialError(f"cannot run {self._gcloud}: {exc.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.command_timeout)
        except asyncio.TimeoutError:
            await _kill_group(proc)
            raise CredentialError(f"gcloud did not answer within {self.command_timeout:.0f}s") from None
        except BaseException:  # cancelled (shutdown): no gcloud may outlive the mixer
            await _kill_group(proc)
            raise
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip().splitlines()
            last = detail[-1][:300] if detail else "no message"
            raise CredentialError(f"gcloud exited with status {proc.returncode}: {last}")
        return _parse_config_helper(out)


def _parse_config_helper(out: bytes) -> tuple[str, float | None]:
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
    source = "Application Default Credentials"
    #: google-auth's HTTP timeout is 120 s by default; the thread should not outlive
    #: a request by that much (a thread cannot be killed).
    http_timeout = 30.0

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

        # Explicit timeouts given by google-auth (the metadata probe's) still win.
        request = functools.partial(google.auth.transport.requests.Request(), timeout=self.http_timeout)
        try:
            if self._credentials is None:
                self._credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            creds = self._credentials
            creds.refresh(request)  # type: ignore[attr-defined]
        except google.auth.exceptions.GoogleAuthError as exc:
            raise CredentialError(f"Application Default Credentials: {exc}") from None
        expiry = creds.expiry  # type: ignore[attr-defined]
        # google-auth's expiry is a naive UTC datetime.
        epoch = float(calendar.timegm(expiry.timetuple())) if expiry else None
        return creds.token, epoch  # type: ignore[attr-defined]

    async def _fetch(self) -> tuple[str, float | None]:
        return await asyncio.to_thread(self._fetch_blocking)
