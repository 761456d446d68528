"""Google access tokens from ``gcloud config config-helper`` (as the Go original gets
them), fetched again when the gcloud configuration changes, so that an account switch
takes effect on the next request (SPEC §5).

gcloud runs as a subprocess in its own process group, killed whole when it overruns
or the mixer shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from notebook_kernels_mixer.backends.credentials.base import CredentialError
from notebook_kernels_mixer.backends.credentials.google import metadata_env, parse_expiry
from notebook_kernels_mixer.backends.credentials.refreshing import RefreshingToken


def gcloud_config_dir(env: Mapping[str, str]) -> Path:
    """Where gcloud keeps its configuration: ``CLOUDSDK_CONFIG`` or ``~/.config/gcloud``."""
    if env.get("CLOUDSDK_CONFIG"):
        return Path(env["CLOUDSDK_CONFIG"])
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".config" / "gcloud"


Stamp = tuple[int, int, int]
Signature = tuple[Stamp | None, ...]


class GcloudConfigWatch:
    """Notices a change of the gcloud configuration by the files' mtimes.

    ``gcloud config set account``, ``gcloud auth login`` and switching configurations
    write one of these files. A check stats a handful of files, at most once per
    ``interval``, on the event loop (a few microseconds).
    """

    interval = 1.0

    def __init__(self, directory: Path, active_name: str | None = None) -> None:
        self.directory = directory
        self._fixed_name = active_name  # CLOUDSDK_ACTIVE_CONFIG_NAME wins over the file
        self._active: tuple[Stamp | None, str] = (None, "default")
        self._baseline: Signature | None = None
        self._checked_at = float("-inf")

    def _active_name(self) -> str:
        """The active configuration's name; the small file is read only when it changed."""
        if self._fixed_name:
            return self._fixed_name
        path = self.directory / "active_config"
        stamp = _stamp(path)
        if stamp != self._active[0]:
            try:
                name = path.read_text(encoding="utf-8").strip() or "default"
            except (OSError, UnicodeDecodeError):
                name = "default"
            self._active = (stamp, name)
        return self._active[1]

    def snapshot(self) -> Signature:
        d = self.directory
        names = ("active_config", "configurations", f"configurations/config_{self._active_name()}",
                 "credentials.db", "access_tokens.db", "config_sentinel")  # fmt: skip
        return tuple(_stamp(d / name) for name in names)

    def mark(self, snapshot: Signature) -> None:
        """Record ``snapshot`` as what the current token was fetched under."""
        self._baseline = snapshot
        self._checked_at = time.monotonic()

    def changed(self) -> bool:
        """Whether the files changed since ``mark`` (checked at most once per interval)."""
        now = time.monotonic()
        if self._baseline is None or now - self._checked_at < self.interval:
            return False
        self._checked_at = now
        current = self.snapshot()
        if current == self._baseline:
            return False
        self._baseline = current
        return True


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill gcloud and whatever it started (its own process group), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


class GcloudToken(RefreshingToken):
    """``gcloud config config-helper --format=json`` → ``.credential.access_token``."""

    kind = "gcloud"
    source = "gcloud"
    #: Bound of one gcloud run (it keeps going for other callers past a request's deadline).
    command_timeout = 60.0

    def __init__(self, backend_name: str, *, gcloud: str = "gcloud",
                 metadata_ip: str | None = None) -> None:
        super().__init__(backend_name)
        self._gcloud = gcloud
        self._env = {**os.environ, **metadata_env(metadata_ip)}
        self.watch = GcloudConfigWatch(
            gcloud_config_dir(self._env), self._env.get("CLOUDSDK_ACTIVE_CONFIG_NAME")
        )

    def _source_changed(self) -> bool:
        return self.watch.changed()

    async def _fetch(self) -> tuple[str, float | None]:
        before = self.watch.snapshot()
        try:
            return await self._run()
        finally:
            after = self.watch.snapshot()
            self.watch.mark(after)
            if after != before:
                # Changed while gcloud ran: a switch, or gcloud's own token cache.
                # Either way it runs once more, and this is the baseline.
                self._fetch_again()

    async def _run(self) -> tuple[str, float | None]:
        try:
            proc = await asyncio.create_subprocess_exec(
                self._gcloud, "config", "config-helper", "--format=json",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                start_new_session=True,  # its own process group: killed whole (_kill_group)
            )  # fmt: skip
        except OSError as exc:
            raise CredentialError(f"cannot run {self._gcloud}: {exc.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.command_timeout)
        except asyncio.TimeoutError:
            await _kill_group(proc)
            raise CredentialError(f"gcloud did not answer within {self.command_timeout:.0f}s") from None
        except BaseException:  # cancelled (shutdown): no gcloud may outlive the mixer
            await _kill_group(proc)
            raise
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip().splitlines()
            last = detail[-1][:300] if detail else "no message"
            raise CredentialError(f"gcloud exited with status {proc.returncode}: {last}")
        return _parse_config_helper(out)


def _parse_config_helper(out: bytes) -> tuple[str, float | None]:
    try:
        credential = json.loads(out)["credential"]
        token = credential["access_token"]
    except (ValueError, KeyError, TypeError):
        raise CredentialError("gcloud printed no credential.access_token") from None
    if not isinstance(token, str) or not token:
        raise CredentialError("gcloud printed an empty access token")
    return token, parse_expiry(credential.get("token_expiry"))
