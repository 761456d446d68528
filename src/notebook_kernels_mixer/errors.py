"""The mixer's error tree; each error knows its HTTP status.

Handlers raise these; one middleware (``front.errors``) turns them into Jupyter-style
JSON answers, so no handler formats an error itself::

    MixerError
    ├── BadRequest            400  malformed JSON, wrong field types, unknown spec prefix
    ├── Forbidden             403  missing/wrong token, XSRF mismatch, foreign Origin
    ├── NotFound              404  unknown kernel, session or kernelspec
    ├── Conflict              409  a kernel id already in use on another backend
    ├── PayloadTooLarge       413  body over the limit
    ├── UpstreamError         4xx/5xx  a backend answered an error; handed on as it said it
    ├── StateUnavailable      503  a change the mixer alone knows could not reach its state file
    ├── OutOfDescriptors      503  the mixer has (almost) no file descriptors left (``descriptors``)
    └── BackendError          502  a backend answered garbage or could not be reached
        ├── BackendUnavailable 503 backend down, or no credentials for it
        └── BackendTimeout     504 a backend did not answer within its timeout

Every error knows its answer (``headers``/``body``), so the middleware that renders
them has no case for any kind.
"""

from __future__ import annotations

from collections.abc import Mapping

from notebook_kernels_mixer import jsonutil

#: On every answer whose body comes from a backend (other than the local server's own
#: pages, which the catch-all proxy hands on): no type sniffing, and if a browser
#: opens it as a page anyway, nothing runs and it has an origin of its own.
SANDBOX_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


class MixerError(Exception):
    status = 500
    reason = "Internal Server Error"
    #: Close the client's connection after this answer (no keep-alive).
    close_connection = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> Mapping[str, str]:
        return {"X-Mixer-Error": "mixer", "Content-Type": "application/json"}

    @property
    def body(self) -> bytes:
        return jsonutil.dumps({"message": self.message, "reason": self.reason})


class BadRequest(MixerError):
    status = 400
    reason = "Bad Request"


class Forbidden(MixerError):
    status = 403
    reason = "Forbidden"


class NotFound(MixerError):
    status = 404
    reason = "Not Found"


class Conflict(MixerError):
    status = 409
    reason = "Conflict"


class PayloadTooLarge(MixerError):
    status = 413
    reason = "Payload Too Large"


class StateUnavailable(MixerError):
    """The mixer's state file did not take a change that only the mixer knows (a kept
    session, a moved session's id): what the request started was undone."""

    status = 503
    reason = "Service Unavailable"


class OutOfDescriptors(MixerError):
    """The mixer has (almost) no file descriptors left: a new connection is refused
    rather than accepted and dropped, and the client's connection is closed after the
    answer, which gives its descriptor back (``descriptors``)."""

    status = 503
    reason = "Service Unavailable"
    close_connection = True


class UpstreamError(MixerError):
    """A backend answered with an error status (an unknown spec, a refused user, …):
    the client gets that answer as the backend gave it, marked with the backend's name."""

    def __init__(self, backend: str, status: int, body: bytes, content_type: str | None) -> None:
        super().__init__(f"backend {backend!r} answered HTTP {status}")
        self.backend = backend
        self.status = status
        self.reason = ""
        self._body = body
        self._content_type = content_type or "application/json"

    @property
    def headers(self) -> Mapping[str, str]:
        return {"X-Mixer-Backend": self.backend, "Content-Type": self._content_type,
                **SANDBOX_HEADERS}

    @property
    def body(self) -> bytes:
        return self._body


class BackendError(MixerError):
    """A backend failed us; the message always names the backend and the cause."""

    status = 502
    reason = "Bad Gateway"

    def __init__(self, backend: str, cause: str) -> None:
        super().__init__(f"backend {backend!r}: {cause}")
        self.backend = backend
        self.cause = cause


class BackendUnavailable(BackendError):
    status = 503
    reason = "Service Unavailable"


class BackendTimeout(BackendError):
    status = 504
    reason = "Gateway Timeout"
