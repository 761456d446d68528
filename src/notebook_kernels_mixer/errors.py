"""The mixer's error tree; each error knows its HTTP status.

Handlers raise these; one middleware (``front.errors``) turns them into Jupyter-style
JSON answers, so no handler formats an error itself::

    MixerError
    ├── BadRequest            400  malformed JSON, wrong field types, unknown spec prefix
    ├── Forbidden             403  missing/wrong token, XSRF mismatch, foreign Origin
    ├── NotFound              404  unknown kernel, session or kernelspec
    ├── PayloadTooLarge       413  body over the limit
    └── BackendError          502  a backend answered garbage or could not be reached
        ├── BackendUnavailable 503 circuit open, or no credentials for it
        └── BackendTimeout     504 a backend did not answer within its timeout
"""

from __future__ import annotations


class MixerError(Exception):
    status = 500
    reason = "Internal Server Error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(MixerError):
    status = 400
    reason = "Bad Request"


class Forbidden(MixerError):
    status = 403
    reason = "Forbidden"


class NotFound(MixerError):
    status = 404
    reason = "Not Found"


class PayloadTooLarge(MixerError):
    status = 413
    reason = "Payload Too Large"


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
