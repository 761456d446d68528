"""Names across backends (SPEC §3): ``python3`` on backend ``remote`` is ``remote-python3``.

Backend names match ``[a-z0-9_]+`` so the first ``-`` always ends the prefix.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from notebook_kernels_mixer.errors import BadRequest
from notebook_kernels_mixer.state import MAX_VALUE_CHARS, storable

# Kernel and session ids are UUIDs on every known backend; allow a little more, but
# nothing that could change the path they are put into (no "/", no dot segments).
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # fullmatch: no trailing "\n"
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


def valid_id(value: object) -> bool:
    """A kernel/session id (from a client or a backend) the mixer can route and keep."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def checked_id(value: str, what: str) -> str:
    """A kernel/session id safe to put into a backend path, percent-encoded."""
    if not valid_id(value):
        raise BadRequest(f"invalid {what} id {value!r}")
    return quote(value, safe="")


def checked_text(value: object, what: str) -> None:
    """400 unless ``value`` (a path, name or type the mixer may keep) is a string of at
    most MAX_VALUE_CHARS characters, encodable as UTF-8. The value is not repeated."""
    if not storable(value):
        raise BadRequest(f"invalid {what}: a string of at most {MAX_VALUE_CHARS} characters,"
                         " encodable as UTF-8 (no lone surrogates), is expected")


def checked_path(value: object, what: str) -> None:
    """:func:`checked_text` for a notebook path, which also may not hold a NUL: no file
    system has one, and jupyter_server answers it with a 500 once the kernel is started."""
    checked_text(value, what)
    if "\x00" in str(value):
        raise BadRequest(f"invalid {what}: a NUL character cannot be part of a file path")


def checked_resource_path(path: str) -> str:
    """A kernelspec resource path (``logo-64x64.png``, ``sub/file.js``) that cannot
    climb out of the kernelspec's directory on the backend."""
    segments = path.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or not _RESOURCE_SEGMENT_RE.match(segment):
            raise BadRequest(f"invalid kernelspec resource path {path!r}")
    return "/".join(quote(s, safe="") for s in segments)
