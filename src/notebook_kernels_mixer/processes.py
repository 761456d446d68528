"""Small process helpers shared by ``mixer lab``, the tests and the benchmark.

Free loopback ports, the descendants of a process (kernels run in sessions of their
own, so a process group does not hold them), liveness that treats a zombie as dead,
and an HTTP probe that never goes through a proxy (every address here is loopback).
Linux's /proc is used where it exists; elsewhere the tree walk finds nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_handed_out: set[int] = set()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _free_on(family: int, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError, AttributeError):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free, else a port free on 127.0.0.1 (and on ::1, as the
    mixer listens on both) that this process has not handed out before."""
    v6 = has_ipv6_loopback()

    def free(port: int) -> bool:
        return _free_on(socket.AF_INET, LOOPBACK, port) and (
            not v6 or _free_on(socket.AF_INET6, "::1", port)
        )

    if preferred and free(preferred):
        _handed_out.add(preferred)
        return preferred
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port in _handed_out or (v6 and not _free_on(socket.AF_INET6, "::1", port)):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("could not find a free loopback port")


def http_status(url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> int:
    """Status of a GET to ``url`` (0 when nothing answers); never through a proxy."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _NO_PROXY.open(request, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def http_get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> bytes:
    """Body of a GET to ``url``, never through a proxy; HTTP errors raise."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    with _NO_PROXY.open(request, timeout=timeout) as resp:
        return bytes(resp.read())


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    """ppid → pids of every live process (Linux); {} elsewhere."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is None or len(fields) < 2:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (not ``pid`` itself)."""
    children = children_map()
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    return not (fields and fields[0] == "Z")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when its parent dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv: Sequence[str], *, log_path: Path, banner: str, env: Mapping[str, str],
          cwd: str | os.PathLike[str] | None = None,
          die_with_parent: bool = False) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own (so it leads its process group and can
    be stopped as a group), output appended to ``log_path`` after a ``banner`` line."""
    with open(log_path, "ab") as log:
        log.write(f"{banner}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=dict(env), cwd=cwd, start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent and sys.platform.startswith("linux")
            else None,
        )
