"""JSON in and out, with orjson when it is installed (merged listings are hot paths)."""

from __future__ import annotations

from typing import Any

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    loads = orjson.loads
    JSONDecodeError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - exercised only without the "fast" extra
    import json

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(data: bytes | str) -> Any:  # type: ignore[misc]
        return json.loads(data)

    JSONDecodeError = json.JSONDecodeError
