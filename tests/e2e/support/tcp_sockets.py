"""Socket options of another process's TCP connections, read from the real sockets.

A process's established TCP connections are found through /proc (``/proc/PID/fd``
names socket inodes, ``/proc/net/tcp{,6}`` gives their ports and state). An option is
read by duplicating the process's descriptor into this one with ``pidfd_getfd(2)``
(Linux ≥ 5.6; needs ptrace access to the process, which root has) and calling
``getsockopt`` on the duplicate: the same kernel socket, so what is read is what the
server set — no timing involved.
"""

from __future__ import annotations

import ctypes
import os
import socket
from dataclasses import dataclass
from pathlib import Path

_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture
_ESTABLISHED = "01"
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Connection:
    pid: int
    fd: int
    local_port: int
    remote_port: int

    def nodelay(self) -> bool:
        return bool(sockopt(self.pid, self.fd, socket.IPPROTO_TCP, socket.TCP_NODELAY))


def _socket_fds(pid: int) -> dict[int, int]:
    """inode → fd of every socket ``pid`` holds."""
    out = {}
    base = Path(f"/proc/{pid}/fd")
    for entry in os.listdir(base):
        try:
            target = os.readlink(base / entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            out[int(target[8:-1])] = int(entry)
    return out


def connections(pid: int) -> list[Connection]:
    """The established TCP connections of ``pid`` (IPv4 and IPv6)."""
    fds = _socket_fds(pid)
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state == _ESTABLISHED and inode in fds:
                found.append(Connection(pid, fds[inode], int(local.rsplit(":", 1)[1], 16),
                                        int(remote.rsplit(":", 1)[1], 16)))  # fmt: skip
    return found


def accepted(pid: int, port: int, peer_port: int) -> Connection:
    """The connection ``pid`` accepted on ``port`` from a client at ``peer_port``."""
    for conn in connections(pid):
        if conn.local_port == port and conn.remote_port == peer_port:
            return conn
    raise AssertionError(f"process {pid} holds no connection {port} ← {peer_port}")


def sockopt(pid: int, fd: int, level: int, option: int) -> int:
    pidfd = os.pidfd_open(pid)
    try:
        dup = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
    if dup < 0:
        err = ctypes.get_errno()
        raise AssertionError(
            f"pidfd_getfd on process {pid} failed: {os.strerror(err)} (these tests read the "
            "servers' sockets and need Linux >= 5.6 and ptrace access: run them as root or "
            "with CAP_SYS_PTRACE)"
        )
    sock = socket.socket(fileno=dup)
    try:
        return sock.getsockopt(level, option)
    finally:
        sock.close()  # closes our duplicate only; the process's socket stays open
