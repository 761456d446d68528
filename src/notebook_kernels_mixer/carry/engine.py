"""One carry: the user namespace of a Python kernel moved into another kernel, through
the mixer, over the two kernels' websockets (nothing touches a disk; the two backends
share nothing).

1. Both kernels, at once: connect; ``kernel_info`` (on control, which a busy ipykernel
   answers, and on shell) — not Python is the end, "unsupported"; a silent execute
   (``store_history=False``, ``stop_on_error=False``) of one line that runs
   ``kernel_code`` in a namespace of its own and registers a comm target made for
   this carry; a ``comm_open`` to it, answered with a ``hello`` (Python, pickle
   protocol, cloudpickle). A busy source runs the execute only after the user's
   cell: the carry waits for it within the budget, interrupts nothing, and gives up
   ("source busy").
2. The serializer: cloudpickle if both kernels have it, else pickle; protocol 5 if
   both can (out-of-band buffers: numpy arrays leave the source without a copy).
3. The source serializes, skips what it cannot (by name, with the reason) and, over
   the cap, the largest values; its manifest goes to the target, which imports the
   modules by name.
4. The bytes: pulled from the source one chunk at a time, at most ``window`` chunks
   pulled and not yet acknowledged by the target (the mixer holds at most that
   many), each handed to the target as it comes; the target restores each value as
   soon as it is whole and says which it restored or could not.
5. The target gets the report as ``_mixer_carry``; both comms are closed (the
   kernels let go of what they held; a kernel whose mixer vanished lets go after
   the budget anyway).

Why the mixer opens the comms and pulls, rather than the source kernel opening a comm
and pushing its chunks: a kernel-opened comm is announced on iopub to every client of
the kernel, and JupyterLab closes a comm whose target it does not know (which would
end the carry in the kernel); and a kernel that pushes fills iopub faster than a
slow target takes it (ZMQ drops at its high-water mark, jupyter_server buffers
without bound). Pulled chunks still travel on iopub, so other clients of the source
kernel see comm messages of an unknown comm go by, which they ignore.

Never worse than no carry: everything runs within ``budget`` seconds (the report
to the target gets ``FINISH_SLACK`` more, closing ``link.CLOSE_TIMEOUT``); a busy,
dead, frozen, restarting or garbage-answering kernel ends the carry with a report
saying so, never an exception. Cancelling the call closes both websockets and
re-raises. One log line per carry: counts, bytes, seconds, outcome — never values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from notebook_kernels_mixer.backends import Backend
from notebook_kernels_mixer.carry import report as outcomes
from notebook_kernels_mixer.carry import wire
from notebook_kernels_mixer.carry.link import KernelLink, LinkLost
from notebook_kernels_mixer.carry.report import CarriedValue, CarryReport, human_size

log = logging.getLogger(__name__)

#: Defaults of ``--carry-budget`` and ``--carry-cap``.
DEFAULT_BUDGET = 60.0
DEFAULT_CAP = 1 << 30
#: Bytes per chunk: well under the 10 MiB a jupyter_server (tornado) accepts in one
#: websocket message, large enough that per-message costs do not count.
CHUNK_SIZE = 1 << 20
#: Chunks pulled from the source and not yet acknowledged by the target, at most.
WINDOW = 8
#: Time the report to the target kernel may take once the budget is spent.
FINISH_SLACK = 2.0
#: A kernel lets go of a carry's state this long after the budget, whatever the mixer does.
KERNEL_STATE_MARGIN = 30.0
#: The variable the target kernel gets, with the report (``print(_mixer_carry)``).
REPORT_VARIABLE = "_mixer_carry"

KERNEL_CODE = Path(__file__).with_name("kernel_code.py").read_text(encoding="utf-8")

Progress = Callable[[int, int], None]


def cell_code(role: str, target_name: str, ttl: float) -> str:
    """The one line executed in a kernel: ``kernel_code`` run in a fresh namespace (not
    the user's), registering the comm target ``target_name`` for ``role``."""
    source = f"{KERNEL_CODE}\ninstall({role!r}, {target_name!r}, {float(ttl)!r})\n"
    return f"exec(compile({source!r}, '<mixer-carry>', 'exec'), {{'__name__': '__mixer_carry__'}})"


class SideFailure(Exception):
    """One kernel could not do its part; ``str()`` says what, from the carry's view."""

    def __init__(self, role: str, what: str, *, not_python: bool = False) -> None:
        super().__init__(f"{role} {what}")
        self.role = role
        self.not_python = not_python


_WAITING_FOR = {
    "connect": "did not accept a websocket within the budget",
    "kernel_info": "did not answer kernel_info within the budget",
    "install": "busy: a cell is still running; the carry waited for it until the budget "
               "was spent and interrupted nothing",
    "open": "did not open the carry's comm within the budget",
    "serialize": "did not finish serializing within the budget",
    "manifest": "did not take the manifest within the budget",
    "transfer": "stopped answering: the budget was spent during the transfer",
    "finish": "did not take the report in time",
}


class _Side:
    """One kernel of the carry and the steps it is at."""

    def __init__(self, role: str, backend: Backend, kernel_id: str, ttl: float) -> None:
        self.role = role
        self.backend = backend
        self.kernel_id = kernel_id
        self.ttl = ttl
        self.link: KernelLink | None = None
        self.stage = "connect"
        self.comm_id = wire.new_id()
        self.hello: dict[str, Any] = {}
        self.ready = False

    @property
    def alive(self) -> bool:
        return self.ready and self.link is not None and self.link.failure is None

    def fail(self, exc: BaseException) -> SideFailure:
        if isinstance(exc, SideFailure):
            return exc
        if isinstance(exc, asyncio.TimeoutError):
            return SideFailure(self.role, _WAITING_FOR.get(self.stage, "did not answer in time"))
        if isinstance(exc, LinkLost):
            return SideFailure(self.role, f"kernel lost ({self.stage}): {exc}")
        return SideFailure(self.role, f"failed ({self.stage}): {type(exc).__name__}: {exc}")

    async def prelude(self, deadline: float, window: int) -> None:
        try:
            self.link = await KernelLink.open(self.backend, self.kernel_id, deadline)
            self.stage = "kernel_info"
            reply = await self.link.request(("control", "shell"), "kernel_info_request", {}, deadline)
            info = reply.content.get("language_info")
            language = info.get("name") if isinstance(info, dict) else None
            if language != "python":
                raise SideFailure(self.role, f"kernel is not a Python kernel ({language or 'unknown'}),"
                                  " nothing carried", not_python=True)
            self.stage = "install"
            target = f"mixer_carry_{self.comm_id}"
            execute = {
                "code": cell_code(self.role, target, self.ttl), "silent": True,
                "store_history": False, "user_expressions": {}, "allow_stdin": False,
                "stop_on_error": False,
            }
            reply = await self.link.request(("shell",), "execute_request", execute, deadline)
            if reply.content.get("status") != "ok":
                c = reply.content
                raise SideFailure(self.role, "could not run the carry's code: "
                                  f"{c.get('ename') or c.get('status')}: {c.get('evalue', '')}"[:300])
            self.stage = "open"
            self.link.watch_comm(self.comm_id, limit=window + 4)
            await self.link.send("shell", "comm_open", {
                "comm_id": self.comm_id, "target_name": target, "data": {},
            }, deadline)
            self.hello, _ = await self.expect("hello", deadline)
            if not isinstance(self.hello.get("protocol"), int):
                raise SideFailure(self.role, "answered garbage: a hello without a pickle protocol")
            self.ready = True
        except Exception as exc:
            raise self.fail(exc) from None

    async def expect(self, op: str, deadline: float) -> tuple[dict[str, Any], list[memoryview]]:
        """The next message of this carry's comm, which must be ``op``."""
        assert self.link is not None
        msg = await self.link.comm_recv(self.comm_id, deadline)
        if msg.msg_type == "comm_close":
            raise SideFailure(self.role, f"closed the carry's comm ({self.stage})")
        data = msg.content.get("data")
        if not isinstance(data, dict):
            raise SideFailure(self.role, "answered garbage: a comm message without data")
        if data.get("op") == "error":
            raise SideFailure(self.role, f"failed ({self.stage}): {data.get('message')}"[:500])
        if data.get("op") != op:
            raise SideFailure(self.role, f"answered garbage: {str(data.get('op'))[:40]!r} where "
                              f"{op!r} was expected")
        return data, msg.buffers

    async def comm_send(self, data: dict[str, Any], deadline: float,
                        buffers: list[memoryview] | None = None) -> None:
        assert self.link is not None
        await self.link.send("shell", "comm_msg", {"comm_id": self.comm_id, "data": data}, deadline,
                             buffers=buffers or ())

    async def close(self) -> None:
        if self.link is None:
            return
        goodbye = [("shell", "comm_close", {"comm_id": self.comm_id, "data": {}})] if self.ready else []
        await self.link.close(goodbye=goodbye)


def _str_map(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return value


def _names(value: Any) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        return None
    return value


class _Carry:
    def __init__(self, source: Backend, source_kernel: str, target: Backend, target_kernel: str, *,
                 budget: float, cap: int, chunk_size: int, window: int,
                 progress: Progress | None) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + budget
        self.budget = budget
        self.cap = cap
        self.chunk_size = chunk_size
        self.window = window
        self.progress = progress
        ttl = budget + FINISH_SLACK + KERNEL_STATE_MARGIN
        self.src = _Side("source", source, source_kernel, ttl)
        self.dst = _Side("target", target, target_kernel, ttl)
        self.outcome: str | None = None
        self.reasons: list[str] = []
        self.serializer: str | None = None
        self.carried: list[CarriedValue] = []
        self.skipped: dict[str, str] = {}
        self.pending: dict[str, tuple[str, int]] = {}  # announced, not yet restored
        self.moved = 0  # bytes acknowledged by the target
        self.in_kernel = False

    # -- the steps ---------------------------------------------------------------------
    async def run(self) -> CarryReport:
        try:
            if await self._preludes():
                try:
                    await self._transfer()
                except SideFailure as exc:
                    self.reasons.append(str(exc))
            await self._finish()
        finally:
            await asyncio.gather(self.src.close(), self.dst.close())
        return self.report()

    async def _preludes(self) -> bool:
        """Both kernels ready; False (with the reasons) if either is not."""
        tasks = [asyncio.ensure_future(side.prelude(self.deadline, self.window))
                 for side in (self.src, self.dst)]
        source, target = tasks
        try:
            # Without a target there is nothing to do; without a source the target
            # still gets the report.
            await asyncio.wait([target])
            if target.exception() is not None:
                source.cancel()
            await asyncio.wait([source])
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        failures = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
        for failure in failures:
            if isinstance(failure, SideFailure) and failure.not_python:
                self.outcome = outcomes.UNSUPPORTED
            self.reasons.append(str(failure))
        return not failures

    async def _transfer(self) -> None:
        src, dst = self.src, self.dst
        cloudpickle = bool(src.hello.get("cloudpickle")) and bool(dst.hello.get("cloudpickle"))
        self.serializer = "cloudpickle" if cloudpickle else "pickle"
        protocol = min(src.hello["protocol"], dst.hello["protocol"], 5)
        try:
            src.stage = "serialize"
            await src.comm_send({"op": "serialize", "serializer": self.serializer, "protocol": protocol,
                                 "cap": self.cap, "chunk": self.chunk_size}, self.deadline)
            manifest, _ = await src.expect("manifest", self.deadline)
        except Exception as exc:
            raise src.fail(exc) from None
        values, modules, chunks, total = self._check_manifest(manifest)
        try:
            dst.stage = "manifest"
            await dst.comm_send({"op": "manifest", "values": values, "modules": modules}, self.deadline)
            ack, _ = await dst.expect("ack", self.deadline)
            self._acknowledged(ack, modules)
        except Exception as exc:
            raise dst.fail(exc) from None
        src.stage = dst.stage = "transfer"
        pulled = forwarded = acked = 0
        while acked < chunks:
            side = src
            try:
                while pulled < chunks and pulled - acked < self.window:
                    await src.comm_send({"op": "pull", "seq": pulled}, self.deadline)
                    pulled += 1
                if forwarded < pulled:
                    chunk, buffers = await src.expect("chunk", self.deadline)
                    size = sum(b.nbytes for b in buffers)
                    if chunk.get("seq") != forwarded or len(buffers) != 1 or not 0 < size <= self.chunk_size:
                        raise SideFailure("source", f"answered garbage: chunk {forwarded} came as "
                                          f"{chunk.get('seq')!r} with {len(buffers)} buffers of {size} bytes")
                    side = dst
                    await dst.comm_send({"op": "chunk", "seq": forwarded}, self.deadline, buffers)
                    forwarded += 1
                side = dst
                while acked < forwarded and (dst.link.comm_pending(dst.comm_id)  # type: ignore[union-attr]
                                             or forwarded - acked >= self.window or forwarded == chunks):
                    ack, _ = await dst.expect("ack", self.deadline)
                    if ack.get("seq") != acked:
                        raise SideFailure("target", f"answered garbage: ack {ack.get('seq')!r} where "
                                          f"{acked} was expected")
                    self._acknowledged(ack)
                    acked += 1
                    self.moved = min(total, acked * self.chunk_size)
                    if self.progress is not None:
                        self.progress(self.moved, total)
            except Exception as exc:
                raise side.fail(exc) from None
        for name in list(self.pending):
            self.skipped[name] = "the target did not say it restored it"
        self.pending.clear()

    def _check_manifest(self, manifest: dict[str, Any]
                        ) -> tuple[list[dict[str, Any]], dict[str, str], int, int]:
        values, modules = manifest.get("values"), _str_map(manifest.get("modules"))
        skipped = _str_map(manifest.get("skipped"))
        total, chunks = manifest.get("bytes"), manifest.get("chunks")
        sizes = 0
        good = (isinstance(values, list) and modules is not None and skipped is not None
                and isinstance(total, int) and isinstance(chunks, int))
        if good:
            for entry in values:  # type: ignore[union-attr]
                parts = entry.get("parts") if isinstance(entry, dict) else None
                if (not isinstance(entry.get("name"), str) or not isinstance(entry.get("type"), str)
                        or not isinstance(parts, list) or not parts or not all(
                            isinstance(p, int) and p >= 0 for p in parts) or parts[0] == 0):
                    good = False
                    break
                sizes += sum(parts)
        if not good or sizes != total or chunks != -(-total // self.chunk_size) or total > self.cap:
            raise SideFailure("source", "answered garbage: an inconsistent manifest")
        assert isinstance(values, list) and modules is not None and skipped is not None
        self.skipped.update(skipped)
        self.pending = {v["name"]: (v["type"], sum(v["parts"])) for v in values}
        return values, modules, chunks, total

    def _acknowledged(self, ack: dict[str, Any], modules: dict[str, str] | None = None) -> None:
        restored, failed = _names(ack.get("restored")), _str_map(ack.get("failed"))
        if restored is None or failed is None:
            raise SideFailure("target", "answered garbage: an acknowledgement without names")
        for name in restored:
            if modules is not None and name in modules:
                self.carried.append(CarriedValue(name, "module", 0, module=modules[name]))
            elif name in self.pending:
                kind, size = self.pending.pop(name)
                self.carried.append(CarriedValue(name, kind, size))
        for name, why in failed.items():
            self.pending.pop(name, None)
            self.skipped[name] = why

    async def _finish(self) -> None:
        """The report into the target kernel, if it can still take it."""
        if not self.dst.alive:
            return
        now = time.monotonic()
        deadline = min(now, self.deadline) + FINISH_SLACK
        self.dst.stage = "finish"
        with contextlib.suppress(SideFailure, LinkLost, asyncio.TimeoutError):
            body = self.report(in_kernel=True).to_json()
            body["source"], body["target"] = self.src.backend.name, self.dst.backend.name
            await self.dst.comm_send({"op": "finish", "report": body}, deadline)
            await self.dst.expect("done", deadline)
            self.in_kernel = True

    # -- the report --------------------------------------------------------------------
    def report(self, *, in_kernel: bool | None = None) -> CarryReport:
        skipped = dict(self.skipped)
        if self.pending:
            why = f"not carried: {self.reasons[0]}" if self.reasons else "not carried"
            skipped.update((name, why) for name in self.pending)
        outcome = self.outcome
        if outcome is None:
            if not self.carried and self.reasons:
                outcome = outcomes.FAILED
            elif self.reasons or skipped:
                outcome = outcomes.PARTIAL
            else:
                outcome = outcomes.OK
        return CarryReport(
            outcome=outcome,
            reason="; ".join(self.reasons) or None,
            carried=tuple(self.carried),
            skipped=skipped,
            bytes=self.moved,
            seconds=time.monotonic() - self.started,
            serializer=self.serializer,
            source=self.src.backend.name,
            source_kernel=self.src.kernel_id,
            target=self.dst.backend.name,
            target_kernel=self.dst.kernel_id,
            in_kernel=self.in_kernel if in_kernel is None else in_kernel,
        )


async def carry_namespace(
    source: Backend,
    source_kernel: str,
    target: Backend,
    target_kernel: str,
    *,
    budget: float = DEFAULT_BUDGET,
    cap: int = DEFAULT_CAP,
    chunk_size: int = CHUNK_SIZE,
    window: int = WINDOW,
    progress: Progress | None = None,
) -> CarryReport:
    """Carry the user namespace of ``source_kernel`` (on ``source``) into
    ``target_kernel`` (on ``target``), both running. Returns within ``budget`` seconds
    (plus ``FINISH_SLACK`` and the closing handshakes) with what happened; never
    raises for what the kernels or backends do. ``cap``: serialized bytes at most
    (the largest values stay behind). ``progress(bytes_done, bytes_total)`` is called
    as the target acknowledges chunks. Cancelling closes both websockets and
    re-raises ``CancelledError``."""
    if budget <= 0 or cap < 0 or chunk_size <= 0 or window <= 0:
        raise ValueError("budget, chunk_size and window must be positive, cap not negative")
    carry = _Carry(source, source_kernel, target, target_kernel, budget=budget, cap=cap,
                   chunk_size=chunk_size, window=window, progress=progress)
    try:
        report = await carry.run()
    except asyncio.CancelledError:
        log.info("carry %s/%s -> %s/%s: cancelled after %.2f s (%s moved)", source.name, source_kernel,
                 target.name, target_kernel, time.monotonic() - carry.started, human_size(carry.moved))
        raise
    except Exception as exc:  # a bug here must not fail the switch
        log.exception("carry %s/%s -> %s/%s failed", source.name, source_kernel, target.name, target_kernel)
        carry.reasons.append(f"internal error: {type(exc).__name__}")
        carry.outcome = outcomes.FAILED
        report = carry.report()
    log.info("%s", report.log_line())
    return report
