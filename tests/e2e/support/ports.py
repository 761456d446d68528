"""Free-port allocation on the loopback interfaces.

The mixer listens on both ``[::1]`` and ``127.0.0.1``, so a port handed out here is
checked free on both families (IPv6 only when the machine has ``::1``).
"""

from __future__ import annotations

import contextlib
import socket

_handed_out: set[int] = set()


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


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 (and ::1), never handed out before in this run."""
    v6 = has_ipv6_loopback()
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in _handed_out:
            continue
        if v6 and not _free_on(socket.AF_INET6, "::1", port):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("could not find a free loopback port")
