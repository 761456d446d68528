"""A jupyter_server IdentityProvider that stands in for Google's kernel service auth.

It admits a request only with ``Authorization: Bearer <token>``, where ``<token>`` is
read from a file *at request time* (so the tests can rotate it). Jupyter's own forms
(``Authorization: token …``, ``?token=``, the login cookie) are refused. It is used
for plain HTTP and for websockets alike (jupyter_server's kernel websocket handler
authenticates through the identity provider in ``prepare``).

Used as ``--ServerApp.identity_provider_class=bearer_identity.BearerFileIdentityProvider``
with this directory on ``PYTHONPATH``; the file is named by
``--BearerFileIdentityProvider.token_file=…`` or the ``MIXER_TEST_BEARER_FILE``
environment variable. This module imports nothing from the test suite.
"""

from __future__ import annotations

import hmac
import os
import re

from jupyter_server.auth.identity import IdentityProvider, User
from traitlets import Unicode, default

_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)


class BearerFileIdentityProvider(IdentityProvider):
    token_file = Unicode(
        config=True, help="File holding the only bearer token accepted, read on every request."
    )

    @default("token_file")
    def _token_file_default(self) -> str:
        return os.environ.get("MIXER_TEST_BEARER_FILE", "")

    @default("token")
    def _token_default(self) -> str:
        # never used to admit anyone; non-empty so that auth counts as enabled
        return "bearer-only"

    def _expected(self) -> str:
        try:
            with open(self.token_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return ""

    def get_user(self, handler):
        header = handler.request.headers.get("Authorization", "")
        m = _BEARER.match(header)
        expected = self._expected()
        if m is None or not expected:
            if header or handler.get_argument("token", ""):
                self.log.warning("refusing request without a valid bearer token")
            return None
        if not hmac.compare_digest(m.group(1).encode(), expected.encode()):
            self.log.warning("refusing request with a stale or wrong bearer token")
            return None
        # skip XSRF and Origin checks the way jupyter_server does for token auth
        handler._token_authenticated = True
        return User(username="bearer", name="Bearer", display_name="Bearer")

    def get_user_cookie(self, handler):
        return None

    @property
    def login_available(self) -> bool:
        return False

    @property
    def auth_enabled(self) -> bool:
        return True
