"""The soak's load: workers that run concurrently against the mixer until the deadline.

* ``kernels-<backend>``: start a kernel, check it runs where it should, then a few
  rounds of (open websocket, execute several times, close), stop the kernel; again.
  Alternates the legacy JSON and the ``v1.kernel.websocket.jupyter.org`` protocols.
* ``sockets-<backend>``: one long-lived kernel; open a websocket, execute once,
  close; again (many open/close cycles through the relay).
* ``sessions``: a notebook session switched back and forth between the two backends
  with ``PATCH /api/sessions/{id}``, executing on each side after each switch.
* ``listings``: the merged ``GET /api/kernelspecs|kernels|sessions``, which must keep
  answering 200 with the local specs while the remote is down (SPEC §4).

A worker never stops on a failure: the ledger records it, the worker pauses and
starts afresh.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
from collections.abc import Coroutine
from typing import Any

from tests.e2e.helpers import WHERE

from .client import MixerClient
from .ledger import BACKENDS, OTHER, SPECS


class Workers:
    def __init__(self, client: MixerClient, args: argparse.Namespace) -> None:
        self.client, self.ledger, self.args = client, client.ledger, args
        self.session_serial = itertools.count(1)

    def all(self) -> list[Coroutine[Any, Any, None]]:
        """One coroutine per worker, as configured by the command line."""
        workers: list[Coroutine[Any, Any, None]] = []
        for backend in BACKENDS:
            workers += [self.kernels(backend) for _ in range(self.args.kernel_workers)]
            workers += [self.sockets(backend) for _ in range(self.args.socket_workers)]
        return [*workers, self.sessions(), self.listings()]

    async def kernels(self, backend: str) -> None:
        """Kernel lifecycles: start, several websocket rounds of executes, stop."""
        worker, c, op = f"kernels-{backend}", self.client, self.ledger.op
        protocols = itertools.cycle(("legacy", "v1"))
        while self.ledger.running():
            kernel_id, created = None, self.ledger.now()
            try:
                async with op(backend, worker, "start kernel"):
                    kernel_id = await c.start_kernel(backend)
                for round_ in range(self.args.rounds):
                    if not self.ledger.running():
                        break
                    async with op(backend, worker, "open websocket", created, kernel_id):
                        conn = await c.connect(backend, kernel_id, next(protocols))
                    try:
                        if round_ == 0:
                            async with op(backend, worker, "execute (where)", created, kernel_id):
                                await c.execute(backend, conn, WHERE, backend)
                        for _ in range(self.args.executes):
                            async with op(backend, worker, "execute", created, kernel_id):
                                await c.execute(backend, conn)
                    finally:
                        await c.disconnect(backend, conn)
            except Exception:
                await self.ledger.pause(0.5)
            finally:
                if kernel_id is not None:
                    with contextlib.suppress(Exception):
                        async with op(backend, worker, "stop kernel", created):
                            await c.stop_kernel(backend, kernel_id)

    async def sockets(self, backend: str) -> None:
        """Many websocket open/execute/close cycles on one long-lived kernel."""
        worker, c, op = f"sockets-{backend}", self.client, self.ledger.op
        protocols = itertools.cycle(("legacy", "v1"))
        kernel_id: str | None = None
        created = self.ledger.now()
        while self.ledger.running():
            try:
                if kernel_id is None:
                    created = self.ledger.now()
                    async with op(backend, worker, "start kernel"):
                        kernel_id = await c.start_kernel(backend)
                async with op(backend, worker, "open websocket", created, kernel_id):
                    conn = await c.connect(backend, kernel_id, next(protocols))
                try:
                    async with op(backend, worker, "execute", created, kernel_id):
                        await c.execute(backend, conn)
                finally:
                    await c.disconnect(backend, conn)
                await self.ledger.pause(self.args.socket_pause)
            except Exception:
                if kernel_id is not None:  # start afresh: the kernel may have died with its server
                    await c.discard(backend, f"/api/kernels/{kernel_id}")
                kernel_id = None
                await self.ledger.pause(0.5)
        if kernel_id is not None:
            with contextlib.suppress(Exception):
                async with op(backend, worker, "stop kernel", created):
                    await c.stop_kernel(backend, kernel_id)

    async def sessions(self) -> None:
        """A notebook session switched between the backends, executing on each side."""
        session: dict | None = None
        where, created = "local", self.ledger.now()
        while self.ledger.running():
            try:
                if session is None:
                    where, created = "local", self.ledger.now()
                    session = await self._create_session()
                await self._execute_in(session, where, created)
                session, where = await self._switch(session, where, created), OTHER[where]
                if where == "remote":
                    created = self.ledger.now()
                await self.ledger.pause(self.args.socket_pause)
            except Exception:
                if session is not None:
                    await self.client.discard(where, f"/api/sessions/{session['id']}")
                session = None
                await self.ledger.pause(0.5)
        if session is not None:
            with contextlib.suppress(Exception):
                async with self.ledger.op(where, "sessions", "delete session", created):
                    await self.client.call("DELETE", f"/api/sessions/{session['id']}", expect=(204,))
                    self.ledger.tally[where].kernels_stopped += 1

    async def _create_session(self) -> dict:
        async with self.ledger.op("local", "sessions", "create session"):
            body = {
                "path": f"soak-{next(self.session_serial)}.ipynb",
                "type": "notebook",
                "name": "soak",
                "kernel": {"name": SPECS["local"]},
            }
            session = await self.client.call("POST", "/api/sessions", body, expect=(201,))
            self.ledger.tally["local"].kernels_started += 1
            self.client.note_ports("local", session["kernel"]["id"])
            return session

    async def _execute_in(self, session: dict, where: str, created: float) -> None:
        """Check the session's kernel runs on ``where``, and execute once more."""
        c, op, kernel = self.client, self.ledger.op, session["kernel"]["id"]
        async with op(where, "sessions", "open websocket", created, kernel):
            conn = await c.connect(where, kernel, "legacy")
        try:
            async with op(where, "sessions", "execute (where)", created, kernel):
                await c.execute(where, conn, WHERE, where)
            async with op(where, "sessions", "execute", created, kernel):
                await c.execute(where, conn)
        finally:
            await c.disconnect(where, conn)

    async def _switch(self, session: dict, where: str, created: float) -> dict:
        """``PATCH`` the session to the other backend's spec; the moved session model."""
        target = OTHER[where]
        # a switch involves both backends; its failures are the remote's
        async with self.ledger.op("remote", "sessions", f"switch {where} -> {target}", created):
            moved = await self.client.call(
                "PATCH", f"/api/sessions/{session['id']}", {"kernel": {"name": SPECS[target]}}
            )
            if moved.get("id") != session["id"] or moved["kernel"]["name"] != SPECS[target]:
                raise RuntimeError(f"switch answered {json.dumps(moved)[:300]}")
        self.ledger.switches[f"{where} -> {target}"] += 1
        self.ledger.tally[target].kernels_started += 1
        self.client.note_ports(target, moved["kernel"]["id"])
        self.ledger.tally[where].kernels_stopped += 1
        return moved

    async def listings(self) -> None:
        """Merged listings must answer (with the local specs) whatever the remote does."""
        while self.ledger.running():
            for path in ("/api/kernelspecs", "/api/kernels", "/api/sessions"):
                with contextlib.suppress(Exception):
                    async with self.ledger.op("local", "listings", f"GET {path}"):
                        answer = await self.client.call("GET", path)
                        if path == "/api/kernelspecs" and SPECS["local"] not in answer["kernelspecs"]:
                            raise RuntimeError(f"no {SPECS['local']} in {json.dumps(answer)[:300]}")
            await self.ledger.pause(1.0)
