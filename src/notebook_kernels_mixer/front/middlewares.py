"""The middlewares, outermost first: access log → errors → protection.

``access_logger`` is outermost so that every request reaches the access log, the
ones that end in an error too (issue 11 item 6). ``errors`` is the one place where
the error tree becomes HTTP answers, and the one that cuts a connection whose answer
had already begun when it failed (issue 11 item 3). ``protect`` enforces SPEC §6
before any backend is contacted: the ``Host`` (DNS rebinding), the token
(constant-time), the XSRF pair when no token is configured, and the Origin of
requests and websocket upgrades (cross-site requests, websocket hijacking).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from yarl import URL

from notebook_kernels_mixer import jsonutil
from notebook_kernels_mixer.config import MixerConfig
from notebook_kernels_mixer.errors import BackendError, Forbidden, MixerError
from notebook_kernels_mixer.front.hosts import (
    admitted_hosts,
    host_allowed,
    hostname,
    same_origin,
)
from notebook_kernels_mixer.front.redact import redact_headers, redact_text

log = logging.getLogger(__name__)
access_log = logging.getLogger("notebook_kernels_mixer.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# aiohttp's own type: a protocol with named parameters, which a bare Callable is not.
Middleware = aiohttp.typedefs.Middleware
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Set on a request whose connection was cut after its answer had begun.
ABORTED = web.RequestKey("mixer_aborted", str)
#: Failures of the network, not of the mixer: logged as one line, without a stack.
NETWORK_ERRORS = (BackendError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


def error_response(status: int, reason: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=jsonutil.dumps({"message": message, "reason": reason}),
        content_type="application/json",
        headers={"X-Mixer-Error": "mixer"},
    )


def mixer_error_response(exc: MixerError) -> web.Response:
    """The answer an error of the tree asks for (``errors``: headers, body, and whether
    the connection closes after it)."""
    response = web.Response(status=exc.status, body=exc.body, headers=exc.headers)
    if exc.close_connection:
        response.force_close()
    return response


def answer_started(request: web.Request) -> bool:
    """Whether some of the answer (at least its head) has gone to the client."""
    return request.writer.output_size > 0


def abort_connection(request: web.Request, reason: str, *, level: int = logging.WARNING) -> None:
    """Cut the client's connection after a failure in the middle of an answer.

    Its head (and perhaps part of its body) is on the wire already: an error answer
    now would be written into that body, and a close after what was sent could pass
    for a complete answer. A reset is what every HTTP client reports as a failure.
    One log line, no stack trace: this is an ordinary network failure.
    """
    log.log(level, "%s %s: %s; connection to the client aborted",
            request.method, request.path, redact_text(reason))
    request[ABORTED] = reason
    transport = request.transport
    if transport is not None:
        transport.abort()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MixerError):
        return exc.message
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error_answer(request: web.Request, exc: BaseException) -> web.Response:
    if isinstance(exc, BackendError):
        # Expected network failure: one line, no stack trace.
        log.warning("%s %s: %s", request.method, request.path, exc.message)
    if isinstance(exc, MixerError):
        return mixer_error_response(exc)
    if isinstance(exc, web.HTTPException):
        return error_response(exc.status, exc.reason, exc.text or exc.reason)
    log.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "Internal Server Error", "internal error in the mixer; see its log")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        failure: Exception = exc
    except Exception as exc:
        failure = exc
    if answer_started(request):
        # Never a second head in a half-sent answer (issue 11 item 3).
        if not isinstance(failure, NETWORK_ERRORS):
            log.error("unexpected error on %s %s", request.method, request.path,
                      exc_info=failure)
        # a client that went away mid-answer is routine (a closed tab, a cancelled download)
        gone = isinstance(failure, ConnectionResetError)
        abort_connection(request, _describe(failure), level=logging.DEBUG if gone else logging.WARNING)
        # aiohttp cannot write this on the aborted connection; it only ends the request.
        return web.Response(status=500)
    if isinstance(failure, ConnectionResetError):
        raise failure  # the client went away before any answer: nothing to say
    return _error_answer(request, failure)


def access_logger(config: MixerConfig) -> Middleware:
    secrets = tuple(s for s in (config.token, *(b.token for b in config.backends)) if s)
    flags = config.log

    def level() -> int | None:
        if flags.request_responses or flags.response_bodies:
            return logging.INFO
        return logging.DEBUG if access_log.isEnabledFor(logging.DEBUG) else None

    def log_line(request: web.Request, outcome: object, started: float, at: int) -> None:
        status, backend, body = _outcome(request, outcome)
        line = "%s %s -> %s (%s, %.1f ms)"
        args = [request.method, redact_text(str(request.rel_url), secrets), status, backend,
                (time.perf_counter() - started) * 1e3]
        if flags.response_bodies and body:
            line += " body: %s"
            args.append(redact_text(body[:4096].decode(errors="replace"), secrets))
        access_log.log(at, line, *args)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        if flags.request_headers:
            access_log.info("> %s %s %s", request.method,
                            redact_text(str(request.rel_url), secrets),
                            redact_headers(request.headers.items()))
        at = level()
        if at is None:
            return await handler(request)
        outcome: object = None
        try:
            outcome = await handler(request)
            return outcome
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            log_line(request, outcome, started, at)

    return middleware


def _outcome(request: web.Request, outcome: object) -> tuple[str, str, bytes]:
    """Status, answering backend and body of what a request ended with."""
    if request.get(ABORTED) is not None:
        backend = outcome.headers.get("X-Mixer-Backend", "mixer") if isinstance(
            outcome, web.StreamResponse) else "mixer"
        return f"{getattr(outcome, 'status', '?')} aborted", backend, b""
    if isinstance(outcome, web.HTTPException):
        return str(outcome.status), "mixer", b""
    if isinstance(outcome, asyncio.CancelledError):
        return "cancelled", "mixer", b""
    if isinstance(outcome, BaseException):
        return type(outcome).__name__, "mixer", b""
    if not isinstance(outcome, web.StreamResponse):
        return "?", "mixer", b""
    body = outcome.body if isinstance(outcome, web.Response) else None
    backend = outcome.headers.get("X-Mixer-Backend", "mixer")
    return str(outcome.status), backend, body if isinstance(body, bytes) else b""


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
    """jupyter_server's rule (``JupyterHandler.check_origin``): an Origin is admitted
    when it is the mixer's own — scheme, host and port equal to the request's
    ``Host`` — or configured (``--allow-origin``, the ``--external-hostname``).

    Another port of localhost is another site: a page served by any local program
    must not reach the kernels (issue 16 item 1). No Origin at all is what
    non-browser clients (GatewayClient, editors, scripts) send.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        url = URL(origin)
    except (ValueError, UnicodeError):
        return False
    if not url.absolute or not url.host:
        return False  # "null" (sandboxed frames, file: pages) and garbage
    if same_origin(url, request.scheme, request.headers.get("Host", "")):
        return True
    if config.external_hostname and url.host.lower() == hostname(config.external_hostname):
        return True
    return f"{url.scheme}://{url.raw_authority}" in config.allowed_origins


def _utf8(text: str) -> bytes:
    """Header bytes that are not UTF-8 reach handlers as lone surrogates (aiohttp
    decodes with ``surrogateescape``); encoded back they compare as the bytes sent,
    and never raise (issue 16 item 10: a 500 with a stack trace before)."""
    return text.encode("utf-8", "surrogateescape")


def _check_token(request: web.Request, expected: bytes) -> None:
    presented = _presented_tokens(request)
    # Any one correct form admits (GatewayClient sends an empty "Authorization: token "
    # beside a correct "token" header). Compare all candidates so the time taken does
    # not depend on which one matched.
    matches = [hmac.compare_digest(_utf8(p), expected) for p in presented]
    if not any(matches):
        raise Forbidden("missing or wrong token" if presented else "a token is required")


def _check_xsrf(request: web.Request) -> None:
    cookie = request.cookies.get("_xsrf", "")
    header = request.headers.get("X-XSRFToken", "")
    if not cookie or not header or not hmac.compare_digest(_utf8(cookie), _utf8(header)):
        raise Forbidden("'_xsrf' cookie and X-XSRFToken header missing or not equal")


def protector(config: MixerConfig) -> Middleware:
    expected = config.token.encode() if config.token else None
    admitted = admitted_hosts(config)
    verdicts: dict[str, bool] = {}  # Host header → admitted; a few entries in practice

    def host_admitted(host: str) -> bool:
        verdict = verdicts.get(host)
        if verdict is None:
            verdict = host_allowed(host, admitted)
            if len(verdicts) < 64:  # bounded: Host headers are chosen by clients
                verdicts[host] = verdict
        return verdict
    if expected is None:
        log.warning(
            "no token configured (--jupyter-token, or [mixer] token_env/token_file): every "
            "program on this machine can run code in your kernels through the mixer; "
            "only the Host, Origin and XSRF checks stand in the way of web pages"
        )

    @web.middleware
    async def protect(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is not None and not host_admitted(host):
            # DNS rebinding (issue 11 item 2): refused with or without a token.
            raise Forbidden(
                f"Host {(host or '')[:200]!r} refused: the mixer answers requests for loopback "
                "addresses, its --external-hostname and --allow-origin hosts only"
            )
        if expected is not None:
            # A token-authenticated request needs no XSRF pair, as in jupyter_server:
            # XSRF protects cookie sessions, which the mixer does not have (issue 13).
            _check_token(request, expected)
        elif request.method not in SAFE_METHODS:
            _check_xsrf(request)
        if not origin_allowed(request, config):
            # Requests too, not only websockets, as jupyter_server's check_origin.
            raise Forbidden(f"request from a foreign origin refused: {request.headers['Origin'][:200]!r}"
                            " (the mixer admits its own origin and --allow-origin ones)")
        return await handler(request)

    return protect
