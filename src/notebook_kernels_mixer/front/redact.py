"""Redaction for everything the mixer logs: no token, cookie or Authorization value
is ever written, whatever the --log-all-* flags say."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "token", "x-xsrftoken",
     "x-auth-token", "x-api-key"}
)
REDACTED = "[redacted]"
_QUERY_SECRET = re.compile(r"(?i)([?&](?:token|access_token|_xsrf|key)=)[^&#\s]*")
_JSON_SECRET = re.compile(
    r'(?i)("(?:token|access_token|id_token|refresh_token|password|_xsrf)"\s*:\s*")[^"]*(")'
)
_BEARER = re.compile(r"(?i)\b(bearer|token)\s+[A-Za-z0-9._~+/=-]{8,}")


def redact_headers(headers: Iterable[tuple[str, str]] | Mapping[str, str]) -> str:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return ", ".join(
        f"{k}: {REDACTED if k.lower() in SECRET_HEADERS else redact_text(v)}" for k, v in items
    )


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    text = _QUERY_SECRET.sub(r"\1" + REDACTED, text)
    text = _JSON_SECRET.sub(r"\1" + REDACTED + r"\2", text)
    text = _BEARER.sub(r"\1 " + REDACTED, text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
