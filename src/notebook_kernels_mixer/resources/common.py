"""Request/response helpers shared by the resource handlers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from notebook_kernels_mixer import jsonutil
from notebook_kernels_mixer.backends import BackendResponse
from notebook_kernels_mixer.errors import BadRequest, PayloadTooLarge

BACKEND_HEADER = "X-Mixer-Backend"
_PASSED_HEADERS = ("Content-Type", "ETag", "Last-Modified", "Cache-Control", "Location")


async def read_json(request: web.Request, *, empty: Any = None) -> Any:
    """The request body as JSON; ``empty`` when there is none. 413/400 otherwise."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"request body is larger than {request.client_max_size} bytes"
        ) from None
    if not body.strip():
        return empty
    try:
        return jsonutil.loads(body)
    except (jsonutil.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    value = await read_json(request, empty={})
    if not isinstance(value, dict):
        raise BadRequest(f"request body must be a JSON object, not {_json_type(value)}")
    return value


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``body[name]`` if present and of the right JSON type, else None; 400 if wrong."""
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise BadRequest(f"{name!r} must be {what}, not {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    return {
        dict: "an object", list: "an array", str: "a string", bool: "a boolean",
        int: "a number", float: "a number", type(None): "null",
    }.get(type(value), type(value).__name__)


def json_response(data: Any, *, status: int = 200, backend: str | None = None) -> web.Response:
    headers = {BACKEND_HEADER: backend} if backend else None
    return web.Response(
        body=jsonutil.dumps(data), status=status, content_type="application/json",
        headers=headers,
    )


def passthrough(resp: BackendResponse) -> web.Response:
    """A backend's own answer (often its error) handed on unchanged, marked as its."""
    headers = {BACKEND_HEADER: resp.backend}
    for name in _PASSED_HEADERS:
        if name in resp.headers:
            headers[name] = resp.headers[name]
    return web.Response(body=resp.body, status=resp.status, headers=headers)
