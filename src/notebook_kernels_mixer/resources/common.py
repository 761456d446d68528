"""Request/response helpers shared by the resource handlers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from notebook_kernels_mixer import jsonutil
from notebook_kernels_mixer.errors import SANDBOX_HEADERS, BadRequest, PayloadTooLarge

BACKEND_HEADER = "X-Mixer-Backend"


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
        value = jsonutil.loads(body)
    except (jsonutil.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not _unicode(value):
        raise BadRequest("request body is not valid JSON: a string holds a lone surrogate"
                         " escape (such as \\udcff), which is not Unicode text")
    return value


def _unicode(value: Any) -> bool:
    """Whether every string (and key) in ``value`` is Unicode text. orjson refuses a
    lone surrogate escape such as ``\\udcff`` as invalid JSON; stdlib json decodes it into
    a string that cannot be encoded (nor kept, nor sent on): the same 400 either way."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


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
    """A JSON answer (of the mixer's APIs, made of what backends answered)."""
    headers = {**SANDBOX_HEADERS, BACKEND_HEADER: backend} if backend else dict(SANDBOX_HEADERS)
    return web.Response(
        body=jsonutil.dumps(data), status=status, content_type="application/json",
        headers=headers,
    )

