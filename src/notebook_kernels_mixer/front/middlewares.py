"""The middlewares, outermost first: errors → access log → protection.

``errors`` is the one place where the error tree becomes HTTP answers. ``protect``
enforces SPEC §6 before any backend is contacted: the token (constant-time), the
XSRF cookie/header pair, and the Origin of websocket upgrades (cross-site websocket
hijacking).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from yarl import URL

from notebook_kernels_mixer import jsonutil
from notebook_kernels_mixer.config import MixerConfig
from notebook_kernels_mixer.errors import BackendError, Forbidden, MixerError
from notebook_kernels_mixer.front.redact import redact_headers, redact_text

log = logging.getLogger(__name__)
access_log = logging.getLogger("notebook_kernels_mixer.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def error_response(status: int, reason: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=jsonutil.dumps({"message": message, "reason": reason}),
        content_type="application/json",
        headers={"X-Mixer-Error": "mixer"},
    )


def mixer_error_response(exc: MixerError) -> web.Response:
    """The answer an error of the tree asks for (``errors``: headers and body)."""
    return web.Response(status=exc.status, body=exc.body, headers=exc.headers)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BackendError as exc:
        # Expected network failure: one line, no stack trace.
        log.warning("%s %s: %s", request.method, request.path, exc.message)
        return mixer_error_response(exc)
    except MixerError as exc:
        return mixer_error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason, exc.text or exc.reason)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "Internal Server Error", "internal error in the mixer; see its log")


def access_logger(config: MixerConfig) -> Callable[..., Awaitable[web.StreamResponse]]:
    secrets = tuple(s for s in (config.token, *(b.token for b in config.backends)) if s)
    flags = config.log

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        if flags.request_headers:
            access_log.info("> %s %s %s", request.method,
                            redact_text(str(request.rel_url), secrets),
                            redact_headers(request.headers.items()))
        response = await handler(request)
        if flags.request_responses or flags.response_bodies or log.isEnabledFor(logging.DEBUG):
            line = "%s %s -> %s (%s, %.1f ms)"
            args = [request.method, redact_text(str(request.rel_url), secrets), response.status,
                    response.headers.get("X-Mixer-Backend", "mixer"),
                    (time.perf_counter() - started) * 1e3]
            if flags.response_bodies and isinstance(response, web.Response) and response.body:
                body = response.body if isinstance(response.body, bytes) else b""
                line += " body: %s"
                args.append(redact_text(body[:4096].decode(errors="replace"), secrets))
            level = logging.INFO if (flags.request_responses or flags.response_bodies) else logging.DEBUG
            access_log.log(level, line, *args)
        return response

    return middleware


def _presented_tokens(request: web.Request) -> list[str]:
    found = []
    header = request.headers.get("token")
    if header:
        found.append(header.strip())
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        found.append(value.strip())
    query = request.rel_url.query.get("token")
    if query:
        found.append(query)
    return found


def origin_allowed(request: web.Request, config: MixerConfig) -> bool:
    origin = request.headers.get("Origin")
    if not origin:
        return True  # not a browser: editors, GatewayClient, scripts
    try:
        url = URL(origin)
    except ValueError:
        return False
    if url.host in LOOPBACK_NAMES or (config.external_hostname and url.host == config.external_hostname):
        return True
    if url.raw_authority and url.raw_authority == request.host:
        return True
    return f"{url.scheme}://{url.raw_authority}" in config.allowed_origins


def protector(config: MixerConfig) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = config.token.encode() if config.token else None

    @web.middleware
    async def protect(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None:
            presented = _presented_tokens(request)
            # Any one correct form admits (GatewayClient sends an empty
            # "Authorization: token " beside a correct "token" header). Compare all
            # candidates so the time taken does not depend on which one matched.
            matches = [hmac.compare_digest(p.encode(), expected) for p in presented]
            if not any(matches):
                raise Forbidden("missing or wrong token" if presented else "a token is required")
        if request.method not in SAFE_METHODS:
            cookie = request.cookies.get("_xsrf", "")
            header = request.headers.get("X-XSRFToken", "")
            if not cookie or not header or not hmac.compare_digest(cookie.encode(), header.encode()):
                raise Forbidden("'_xsrf' cookie and X-XSRFToken header missing or not equal")
        if request.headers.get("Upgrade", "").lower() == "websocket" and not origin_allowed(
            request, config
        ):
            raise Forbidden(f"websocket from a foreign origin refused: {request.headers['Origin']}")
        return await handler(request)

    return protect
