"""Names across backends (SPEC §3): ``python3`` on backend ``remote`` is ``remote-python3``.

Backend names match ``[a-z0-9_]+`` so the first ``-`` always ends the prefix.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from notebook_kernels_mixer.errors import BadRequest

# Kernel and session ids are UUIDs on every known backend; allow a little more, but
# nothing that could change the path they are put into (no "/", no dot segments).
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SPEC_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,255}$")
_RESOURCE_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def prefixed(backend: str, name: str) -> str:
    return f"{backend}-{name}"


def split_prefixed(name: object, known: tuple[str, ...] | list[str]) -> tuple[str, str]:
    """``"remote-python3"`` → ``("remote", "python3")``; anything else is a 400."""
    if not isinstance(name, str) or not name:
        raise BadRequest("kernel name must be a non-empty string")
    prefix, sep, bare = name.partition("-")
    if not sep or not bare or prefix not in known:
        raise BadRequest(
            f"unknown kernelspec {name!r}: names start with a backend prefix "
            f"({', '.join(p + '-' for p in known)})"
        )
    if not _SPEC_NAME_RE.match(bare):
        raise BadRequest(f"invalid kernelspec name {name!r}")
    return prefix, bare


def checked_id(value: str, what: str) -> str:
    """A kernel/session id safe to put into a backend path, percent-encoded."""
    if not _ID_RE.match(value):
        raise BadRequest(f"invalid {what} id {value!r}")
    return quote(value, safe="")


def checked_resource_path(path: str) -> str:
    """A kernelspec resource path (``logo-64x64.png``, ``sub/file.js``) that cannot
    climb out of the kernelspec's directory on the backend."""
    segments = path.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or not _RESOURCE_SEGMENT_RE.match(segment):
            raise BadRequest(f"invalid kernelspec resource path {path!r}")
    return "/".join(quote(s, safe="") for s in segments)
