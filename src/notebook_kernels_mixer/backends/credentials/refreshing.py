"""A bearer token fetched from a source and cached until near its expiry.

``RefreshingToken`` holds everything a token source shares (the cache, one refresh for
all callers, backoff, the refresh-once rule on a refusal); a source subclasses it and
writes ``_fetch`` (and, if its configuration can change under it, ``_source_changed``
and ``_fetch_again``). The Google sources are in ``gcloud`` and ``google``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from notebook_kernels_mixer.backends.credentials.base import CredentialError, Credentials

log = logging.getLogger("notebook_kernels_mixer.backends.credentials")


def _consume(task: asyncio.Task[str]) -> None:
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

    A caller waits for a refresh at most as long as its request may take; a token that
    is due for refresh but still valid is served at once while one refresh runs in the
    background.
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
        #: Bumped by ``_fetch_again``: a fetch that started before the bump may carry
        #: an old identity (see ``_refresh``). Only this class reads or writes it.
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

    # -- what a source writes ------------------------------------------------------------
    async def _fetch(self) -> tuple[str, float | None]:
        """Return (access token, expiry as epoch seconds or None)."""
        raise NotImplementedError

    def _source_changed(self) -> bool:
        """Whether the source's configuration changed since the last fetch (cheap)."""
        return False

    def _fetch_again(self) -> None:
        """The source's configuration changed: a fetch under way may carry the old
        identity, so ``_refresh`` runs ``_fetch`` once more when it ends. A source calls
        this from its ``_fetch`` when it notices the change itself."""
        self._generation += 1

    # -- what callers use ----------------------------------------------------------------
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
        self._fetch_again()
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
