"""Google access tokens from Application Default Credentials (as Google's Jupyter
extension gets them), and what every Google source shares: the metadata server
override and the expiry format."""

from __future__ import annotations

import asyncio
import calendar
import functools
import os
from datetime import datetime
from typing import TYPE_CHECKING

from notebook_kernels_mixer.backends.credentials.base import CredentialError
from notebook_kernels_mixer.backends.credentials.refreshing import RefreshingToken

if TYPE_CHECKING:
    import google.auth.credentials

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


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


class GoogleAdcToken(RefreshingToken):
    """Application Default Credentials with the cloud-platform scope (google-auth).

    google-auth's HTTP is blocking: each fetch runs in a thread."""

    kind = "google-adc"
    source = "Application Default Credentials"
    #: google-auth's HTTP timeout is 120 s by default; the thread should not outlive
    #: a request by that much (a thread cannot be killed).
    http_timeout = 30.0

    def __init__(self, backend_name: str, *, metadata_ip: str | None = None) -> None:
        super().__init__(backend_name)
        self._metadata_ip = metadata_ip
        self._credentials: google.auth.credentials.Credentials | None = None

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
            creds.refresh(request)  # type: ignore[no-untyped-call]  # google-auth leaves it unannotated
        except google.auth.exceptions.GoogleAuthError as exc:
            raise CredentialError(f"Application Default Credentials: {exc}") from None
        if not isinstance(creds.token, str) or not creds.token:
            raise CredentialError("Application Default Credentials gave no access token")
        expiry = creds.expiry
        # google-auth's expiry is a naive UTC datetime.
        epoch = float(calendar.timegm(expiry.timetuple())) if expiry else None
        return creds.token, epoch

    async def _fetch(self) -> tuple[str, float | None]:
        return await asyncio.to_thread(self._fetch_blocking)
