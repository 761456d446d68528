"""The state files' safety: one owner at a time, the user's own files, mode 0600.

* **One mixer per file.** ``<file>.lock`` is held with ``flock`` for the life of the
  store; the kernel releases it when its owner dies, even by ``kill -9``, so a stale
  lock never needs cleaning up. A second mixer is refused with the holder's PID.
* **Never through a link, never another user's file.** Every file (the database, its
  ``-wal``/``-shm``, the lock) is opened here with ``O_NOFOLLOW`` and checked with
  ``fstat`` before SQLite opens it: a link planted in a shared directory must not make
  the mixer write (or chmod) a file of the attacker's choosing.
* **0600 whatever the umask**: SQLite creates a database with the umask's mode and
  gives its ``-wal``/``-shm`` the database's mode, so all are created (or fixed) here.
* **A directory nobody else can swap files in** (:func:`check_directory`).

Runs in a worker thread (:func:`notebook_kernels_mixer.state.database.open_file`).
"""

from __future__ import annotations

import errno
import os
import stat

from notebook_kernels_mixer.state.errors import StateError

try:
    import fcntl
except ImportError:  # Windows: no flock; a second mixer is not detected there.
    HAVE_FLOCK = False
else:
    HAVE_FLOCK = True

FILE_MODE = 0o600
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_ADVICE = "or choose another --state-file"


def check_directory(directory: str) -> None:
    """Refuse a directory where another user could swap the state files for links to
    theirs (or to a victim's): one writable by group or others, unless it is sticky
    (like /tmp: only a file's owner may then remove or rename it, and every state file
    is checked to be ours, :func:`own`), or one that belongs to another user."""
    if not hasattr(os, "geteuid"):
        return  # Windows: no such permissions
    st = os.stat(directory)
    if st.st_uid not in (os.geteuid(), 0):
        raise StateError(f"the state directory {directory} belongs to another user"
                         f" (uid {st.st_uid}), who could replace the state files; {_ADVICE}")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise StateError(
            f"the state directory {directory} is writable by other users (mode"
            f" {stat.S_IMODE(st.st_mode):04o}, not sticky): they could replace the state files;"
            f" make it private (chmod go-w {directory}) {_ADVICE}")


def own(path: str) -> int:
    """Open (creating, mode 0600) a state file that must be this user's own regular
    file: never through a symbolic link, never a hard link to another file."""
    try:
        fd = os.open(path, _OPEN_FLAGS, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(f"{path} is a symbolic link; the mixer does not follow it"
                             " (remove it, or choose another --state-file)") from None
        raise
    try:
        st = os.fstat(fd)
        mine = not hasattr(os, "geteuid") or st.st_uid == os.geteuid()
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not mine:
            raise StateError(f"{path} is not a regular file of this user's own (uid {st.st_uid},"
                             f" {st.st_nlink} links); remove it, or choose another --state-file")
        if stat.S_IMODE(st.st_mode) != FILE_MODE and hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)  # whatever the umask, or an older mixer, made it
    except BaseException:
        os.close(fd)
        raise
    return fd


def own_files(path: str) -> None:
    """The database and its ``-wal``/``-shm``, created 0600 before SQLite opens them
    (SQLite creates a database with the umask's mode, and then gives its -wal/-shm the
    database's mode) and checked to be ours."""
    for name in (path, path + "-wal", path + "-shm"):
        os.close(own(name))


def acquire(path: str) -> int | None:
    """Hold ``<path>.lock`` exclusively for the life of the store. The descriptor is not
    inherited by child processes (O_CLOEXEC), so only this process's death releases it.
    None where there is no flock (Windows)."""
    if not HAVE_FLOCK:
        return None
    lock_path = path + ".lock"
    fd = own(lock_path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        by = f" by process {holder}" if holder.isdigit() else ""
        raise StateError(
            f"the state file {path} is in use by another mixer ({lock_path} is locked{by});"
            " stop that mixer, or give this one another --state-file or --port"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def release(lock_fd: int | None) -> None:
    if lock_fd is not None:
        os.close(lock_fd)  # closing the only descriptor releases the flock
