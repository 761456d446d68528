"""What of a client's request may reach a backend (SPEC §5, §6).

A backend receives only its own credentials: the client's token — in the query
(``?token=``, how browsers and ``@jupyterlab/services`` authenticate websockets), in
headers, or inside a Referer — never leaves the mixer. Besides leaking the local
token to a remote, a forwarded ``?token=`` would make a token-protected backend
prefer it over its own ``Authorization`` header and refuse the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode

from yarl import URL

#: Query parameters that carry a client's credentials to the mixer.
CLIENT_CREDENTIAL_PARAMS = frozenset({"token", "access_token"})
#: Request headers that carry a client's credentials to the mixer (or cookies of the
#: mixer's origin, meaningless to a backend).
CLIENT_CREDENTIAL_HEADERS = frozenset({"token", "authorization", "cookie", "x-xsrftoken"})


def forwarded_query(raw_query: str) -> str:
    """``raw_query`` without the client's credentials; untouched when it has none."""
    if not raw_query or not any(p + "=" in raw_query for p in CLIENT_CREDENTIAL_PARAMS):
        return raw_query
    kept = [(k, v) for k, v in parse_qsl(raw_query, keep_blank_values=True)
            if k not in CLIENT_CREDENTIAL_PARAMS]
    return urlencode(kept)


def origin_headers(client: Mapping[str, str], *, mixer_host: str | None,
                   external_hostname: str | None, backend_origin: str) -> dict[str, str]:
    """Origin/Referer that pointed at the mixer now point at the backend's origin.

    A Referer is reduced to that origin: its path and query (``/lab?token=…``) are the
    client's business. Any other Origin (the external hostname, a foreign site
    admitted by config) is dropped: backends judge same-origin against their own Host,
    and no Origin at all is what a non-browser client sends.
    """
    out: dict[str, str] = {}
    for name in ("Origin", "Referer"):
        value = client.get(name)
        if not value:
            continue
        try:
            url = URL(value)
        except ValueError:
            continue
        if mixer_host and url.raw_authority == mixer_host and (
            not external_hostname or url.host != external_hostname
        ):
            out[name] = backend_origin + ("/" if name == "Referer" else "")
    return out
