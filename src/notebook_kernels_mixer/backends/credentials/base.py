"""The credentials interface, its error, and the simplest credentials: a fixed token."""

from __future__ import annotations

from collections.abc import Mapping


class CredentialError(Exception):
    """No credential could be had; the message says why (and holds no secret)."""


class Credentials:
    """Adds authentication headers to backend requests. The base class adds none.

    ``Backend.authorized`` drives it: ``headers`` for each attempt, ``rejected`` when the
    backend answered 401/403 (may a retry with fresh credentials help?), ``accepted``
    when it answered anything else.
    """

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
