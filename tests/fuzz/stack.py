"""The real topology the fuzzer runs against: a local jupyter_server, a bearer-only
jupyter_server standing in for the remote (reached via ``--remote-url``, with the
stand-in ``gcloud``), and the mixer as a subprocess. Built from the end-to-end
harness in ``tests/e2e/support``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.support import topology
from tests.e2e.support.fake_gcloud import FakeGcloud
from tests.e2e.support.topology import JupyterServer, Mixer


@dataclass
class Stack:
    local: JupyterServer
    remote: JupyterServer
    mixer: Mixer
    gcloud: FakeGcloud
    token: str
    xsrf: str
    workdir: Path

    def mixer_headers(self) -> dict[str, str]:
        """What every request to the mixer carries: the token and a matching XSRF pair."""
        return {"token": self.token, "Cookie": f"_xsrf={self.xsrf}", "X-XSRFToken": self.xsrf}


@contextmanager
def running_stack(workdir: Path) -> Iterator[Stack]:
    """Start local, remote and mixer; stop them (by PID) on the way out."""
    token, xsrf = uuid.uuid4().hex, uuid.uuid4().hex
    gcloud = FakeGcloud(workdir / "gcloud", token_file=workdir / "remote-bearer-token")
    local = topology.jupyter_server("local", workdir, where="local", token=token)
    remote = topology.jupyter_server("remote", workdir, where="remote", bearer_file=gcloud.token_file)
    mixer = topology.mixer(workdir, local=local, remote=remote, token=token, gcloud=gcloud)
    try:
        local.start(wait=False)
        remote.start(wait=False)
        local.wait_ready()
        remote.wait_ready()
        mixer.start()
        yield Stack(local, remote, mixer, gcloud, token, xsrf, workdir)
    finally:
        for proc in (mixer, remote, local):
            proc.stop()
