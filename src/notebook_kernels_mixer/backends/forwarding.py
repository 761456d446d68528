"""What of a client's request may reach a backend (SPEC §5, §6).

A backend receives only its own credentials: the client's token — in the query
(``?token=``, how browsers and ``@jupyterlab/services`` authenticate websockets), in
headers, or inside a Referer — never leaves the mixer. Besides leaking the local
token to a remote, a forwarded ``?token=`` would make a token-protected backend
prefer it over its own ``Authorization`` header and refuse the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote_plus

from yarl import URL

from notebook_kernels_mixer.front.hosts import same_origin

#: Query parameters that carry a client's credentials to the mixer.
CLIENT_CREDENTIAL_PARAMS = frozenset({"token", "access_token"})
#: Request headers that carry a client's credentials to the mixer (or cookies of the
#: mixer's origin, meaningless to a backend).
CLIENT_CREDENTIAL_HEADERS = frozenset({"token", "authorization", "cookie", "x-xsrftoken"})


def forwarded_query(raw_query: str) -> str:
    """``raw_query`` without the client's credentials; untouched when it has none.

    Keys are judged decoded, as the front reads them (``%74oken=`` is ``token=`` to
    yarl, and so to the token check: issue 16 item 8); the pairs kept go on byte for
    byte as the client encoded them.
    """
    if not raw_query:
        return raw_query
    pairs = raw_query.split("&")
    kept = [p for p in pairs if unquote_plus(p.partition("=")[0]) not in CLIENT_CREDENTIAL_PARAMS]
    return raw_query if len(kept) == len(pairs) else "&".join(kept)


def origin_headers(client: Mapping[str, str], *, scheme: str, mixer_host: str | None,
                   external_hostname: str | None, backend_origin: str,
                   local: bool) -> dict[str, str]:
    """The Origin/Referer a backend gets for a client's request (SPEC §6).

    The mixer's own origin becomes the backend's, as a same-origin request to it
    would carry. A Referer is reduced to an origin: its path and query
    (``/lab?token=…``) are the client's business. Any other Origin (the external
    hostname, a site admitted by ``--allow-origin``) reaches the local server as it
    is, so that server's own origin check applies too (issue 16 item 1: dropping it
    made every request look like a non-browser one), and never reaches a remote.
    """
    out: dict[str, str] = {}
    for name in ("Origin", "Referer"):
        value = client.get(name)
        if not value:
            continue
        try:
            url = URL(value)
        except (ValueError, UnicodeError):
            continue
        own = mixer_host is not None and same_origin(url, scheme, mixer_host) and (
            not external_hostname or url.host != external_hostname
        )
        if own:
            out[name] = backend_origin + ("/" if name == "Referer" else "")
        elif local and url.absolute and url.host:
            out[name] = str(url.origin()) + ("/" if name == "Referer" else "")
    return out
