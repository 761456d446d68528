# ruff: noqa: UP004, UP031
"""The part of a carry that runs inside the two kernels (ipykernel), sent to them as
source text by ``carry.engine`` (it is never imported by the mixer itself; the unit
tests import it to test ``Source`` and ``Sink`` on plain dicts).

It must run on any Python a kernel may have (3.7 and later; 3.8 for pickle protocol
5's out-of-band buffers, ``pickle.loads(buffers=...)``), with the standard library and
IPython only, so it uses no newer syntax, and its annotations are never evaluated
(``from __future__ import annotations``).

The cell the engine executes is one line, ``exec(compile(SOURCE, ...), {...})``: this
code runs in a namespace of its own and leaves nothing in the user's. ``install``
registers a comm target under a name made for one carry; the mixer opens a comm to
it, and everything else is comm messages (JSON ``data``, bytes in ``buffers``):

source kernel (``role = "source"``)::

    mixer → open                        kernel → {"op": "hello", ...}
    mixer → {"op": "serialize", ...}    kernel → {"op": "manifest", ...}
    mixer → {"op": "pull", "seq": k}    kernel → {"op": "chunk", "seq": k} + 1 buffer
    mixer → close                       (the kernel frees what it held)

target kernel (``role = "target"``)::

    mixer → open                        kernel → {"op": "hello", ...}
    mixer → {"op": "manifest", ...}     kernel → {"op": "ack", "seq": -1, ...} (modules)
    mixer → {"op": "chunk", "seq": k}   kernel → {"op": "ack", "seq": k, "restored": [...],
            + buffers                              "failed": {...}}
    mixer → {"op": "finish", ...}       kernel → {"op": "done"} (the report variable set)

Any failure inside a handler is answered with ``{"op": "error", "message": ...}``.
The bytes of the carried values are the concatenation, in manifest order, of each
value's parts (its pickle, then its protocol-5 out-of-band buffers, e.g. numpy
arrays, which are sent from the array's own memory without a copy); a chunk is the
next ``chunk`` bytes of that stream. The pulls come from the mixer one window at a
time, so no side holds more than a few chunks in flight.
"""

from __future__ import annotations

import contextlib
import importlib
import pickle
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

#: The variable the target kernel gets, with what the carry did (see ``CarryReport``).
REPORT_VARIABLE = "_mixer_carry"

#: IPython's own names, left behind (besides every name starting with "_", and every
#: name IPython put in ``user_ns_hidden`` that still holds what IPython put there).
IPYTHON_NAMES = frozenset(["In", "Out", "exit", "quit", "get_ipython"])

_MISSING = object()


class CarryError(Exception):
    """The mixer asked for something this side cannot do (answered as an error)."""


def _short(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > 200:
        text = text[:200] + "..."
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def type_name(value: object) -> str:
    cls = type(value)
    module = getattr(cls, "__module__", None) or ""
    name = getattr(cls, "__qualname__", None) or cls.__name__
    return name if module == "builtins" else module + "." + name


def user_names(user_ns: dict[str, Any], hidden: dict[str, Any]) -> list[str]:
    """The user's names in ``user_ns``, as IPython's ``%who`` sees them, less every
    name starting with "_" (IPython's ``_``, ``_i3``, ``_oh``…; the user's private ones)."""
    names = []
    for name, value in list(user_ns.items()):
        if not isinstance(name, str) or name.startswith("_") or name in IPYTHON_NAMES:
            continue
        if hidden.get(name, _MISSING) is value:
            continue
        names.append(name)
    return names


def cloudpickle_version() -> str | None:
    try:
        import cloudpickle  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except Exception:
        return None
    return str(getattr(cloudpickle, "__version__", "?"))


def hello() -> dict[str, Any]:
    return {
        "op": "hello",
        "python": ".".join(str(n) for n in sys.version_info[:3]),
        "protocol": pickle.HIGHEST_PROTOCOL,
        "cloudpickle": cloudpickle_version(),
    }


def _known_size(value: object) -> int | None:
    """The size of a flat value without serializing it (None: not known so cheaply), so
    that a value over the cap is not copied into a pickle only to be dropped."""
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if isinstance(value, memoryview):
        return value.nbytes
    module = getattr(type(value), "__module__", "") or ""
    if module.split(".")[0] == "numpy":
        nbytes = getattr(value, "nbytes", None)
        if isinstance(nbytes, int):
            return nbytes
    return None


def _dumps(dumps: Callable[..., bytes], value: object, protocol: int) -> list[memoryview]:
    """``value`` as parts: its pickle, then its out-of-band buffers (memoryviews of
    the value's own memory, not copies)."""
    if protocol >= 5:
        buffers: list[pickle.PickleBuffer] = []
        payload = dumps(value, protocol=protocol, buffer_callback=buffers.append)
        try:
            return [memoryview(payload)] + [b.raw() for b in buffers]
        except BufferError:  # a buffer that is not contiguous: in-band after all
            pass
    return [memoryview(dumps(value, protocol=protocol))]


def over_cap(size: int, cap: int) -> str:
    return "over the size cap: %d bytes serialized, the cap is %d bytes for all values" % (size, cap)


class Source(object):
    """The source side: what of ``user_ns`` travels, serialized, and the chunks."""

    def __init__(self, user_ns: dict[str, Any], hidden: dict[str, Any], serializer: str, protocol: int,
                 cap: int, chunk: int) -> None:
        if chunk <= 0:
            raise CarryError("invalid chunk size %r" % (chunk,))
        if serializer == "cloudpickle":
            import cloudpickle  # type: ignore[import-untyped,import-not-found,unused-ignore]

            dumps = cloudpickle.dumps
        elif serializer == "pickle":
            dumps = pickle.dumps
        else:
            raise CarryError("unknown serializer %r" % (serializer,))
        protocol = min(int(protocol), pickle.HIGHEST_PROTOCOL)
        self.modules = {}
        self.skipped = {}
        candidates = []
        for name in user_names(user_ns, hidden):
            value = user_ns[name]
            if isinstance(value, types.ModuleType):
                module = getattr(value, "__name__", None)
                if isinstance(module, str) and module != "__main__":
                    self.modules[name] = module
                else:
                    self.skipped[name] = "a module without an importable name"
                continue
            size = _known_size(value)
            if size is not None and size > cap:
                self.skipped[name] = over_cap(size, cap)
                continue
            try:
                parts = _dumps(dumps, value, protocol)
            except Exception as exc:
                self.skipped[name] = "cannot be serialized (%s): %s" % (serializer, _short(exc))
                continue
            candidates.append((name, type_name(value), parts, sum(p.nbytes for p in parts)))
        # Over the cap: the largest values stay behind, until the rest fits.
        total = sum(c[3] for c in candidates)
        dropped = set()
        for name, _, _, size in sorted(candidates, key=lambda c: c[3], reverse=True):
            if total <= cap:
                break
            self.skipped[name] = over_cap(size, cap)
            dropped.add(name)
            total -= size
        self.values = [c for c in candidates if c[0] not in dropped]
        self.total = total
        self.chunk = int(chunk)
        self.chunks = (total + self.chunk - 1) // self.chunk
        self.sent = 0
        self._pieces = self._iter_chunks()

    def manifest(self) -> dict[str, Any]:
        return {
            "op": "manifest",
            "values": [
                {"name": name, "type": tname, "parts": [p.nbytes for p in parts]}
                for name, tname, parts, _ in self.values
            ],
            "modules": self.modules,
            "skipped": self.skipped,
            "bytes": self.total,
            "chunks": self.chunks,
        }

    def _iter_chunks(self) -> Iterator[list[memoryview]]:
        pending, size = [], 0
        for _, _, parts, _ in self.values:
            for part in parts:
                offset, end = 0, part.nbytes
                while offset < end:
                    take = min(end - offset, self.chunk - size)
                    pending.append(part[offset:offset + take])
                    size += take
                    offset += take
                    if size == self.chunk:
                        yield pending
                        pending, size = [], 0
        if pending:
            yield pending

    def pull(self, seq: object) -> Any:
        """Chunk ``seq`` (pulls come in order): one buffer, a view of the value's own
        memory when the chunk lies within one part."""
        if seq != self.sent:
            raise CarryError("pull %r out of order (next is %d)" % (seq, self.sent))
        pieces = next(self._pieces, None)
        if pieces is None:
            raise CarryError("pull %r past the last chunk (%d chunks)" % (seq, self.chunks))
        self.sent += 1
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _rebind(value: object, user_ns: dict[str, Any]) -> object:
    """A function defined in the notebook (cloudpickle carries it by value, with a
    snapshot of the globals it used) sees the notebook's globals again, as it did in
    the source kernel."""
    if not isinstance(value, types.FunctionType) or value.__module__ != "__main__":
        return value
    if value.__globals__ is user_ns:
        return value
    try:
        fn = types.FunctionType(value.__code__, user_ns, value.__name__, value.__defaults__,
                                value.__closure__)
        fn.__kwdefaults__ = value.__kwdefaults__
        fn.__qualname__ = value.__qualname__
        fn.__doc__ = value.__doc__
        fn.__annotations__ = value.__annotations__
        fn.__dict__.update(value.__dict__)
        fn.__module__ = value.__module__
    except Exception:
        return value
    return fn


class Sink(object):
    """The target side: bytes in, values into ``user_ns`` as soon as each is whole."""

    def __init__(self, user_ns: dict[str, Any], values: list[Any]) -> None:
        self.user_ns = user_ns
        self.values = []
        for entry in values:
            name, parts = entry.get("name"), entry.get("parts")
            if (not isinstance(name, str) or not isinstance(parts, list) or not parts
                    or not all(isinstance(p, int) and p >= 0 for p in parts)):
                raise CarryError("invalid manifest entry %r" % (entry,))
            self.values.append((name, parts))
        self._value = 0  # index in self.values
        self._part = 0  # index in the current value's parts
        self._parts: list[bytearray] = []  # the current value's complete parts
        self._current: bytearray | None = None  # the part being filled
        self._filled = 0
        self.received = 0

    def import_modules(self, modules: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        """``name → module``: each imported by its name; → (restored, failed)."""
        restored: list[str] = []
        failed: dict[str, str] = {}
        for name, module in sorted(modules.items()):
            try:
                self.user_ns[name] = importlib.import_module(module)
            except Exception as exc:
                failed[name] = "module %r cannot be imported here: %s" % (module, _short(exc))
            else:
                restored.append(name)
        return restored, failed

    @property
    def complete(self) -> bool:
        return self._value >= len(self.values)

    def _settle(self, restored: list[str], failed: dict[str, str]) -> None:
        """Move on past whole parts and values (restoring those); stop at the first
        part that still needs bytes."""
        while self._value < len(self.values):
            name, sizes = self.values[self._value]
            if self._part < len(sizes):
                if self._current is None:
                    self._current, self._filled = bytearray(sizes[self._part]), 0
                if self._filled < len(self._current):
                    return
                self._parts.append(self._current)
                self._current = None
                self._part += 1
                continue
            parts, self._parts = self._parts, []
            self._value, self._part = self._value + 1, 0
            try:
                if len(parts) > 1:
                    value = pickle.loads(parts[0], buffers=parts[1:])
                else:
                    value = pickle.loads(parts[0])
                self.user_ns[name] = _rebind(value, self.user_ns)
            except Exception as exc:
                failed[name] = "cannot be restored here: %s" % _short(exc)
            else:
                restored.append(name)

    def feed(self, buffers: list[Any]) -> tuple[list[str], dict[str, str]]:
        """The bytes of one chunk; → (restored, failed) of the values it completed."""
        restored: list[str] = []
        failed: dict[str, str] = {}
        for buf in buffers:
            view = memoryview(buf).cast("B")
            offset, end = 0, view.nbytes
            while offset < end:
                self._settle(restored, failed)
                if self._current is None:
                    raise CarryError("more bytes than the manifest announced")
                take = min(end - offset, len(self._current) - self._filled)
                self._current[self._filled:self._filled + take] = view[offset:offset + take]
                self._filled += take
                offset += take
            self.received += end
        self._settle(restored, failed)
        return restored, failed


class CarryReport(object):
    """What the mixer carried into this kernel when the notebook changed kernels:
    ``outcome`` ("ok", "partial", "failed", "unsupported"), ``reason``, ``carried``
    (name → (type, bytes)), ``skipped`` (name → why), ``bytes``, ``seconds``,
    ``source``/``target`` (backend and kernel id), ``serializer``."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.outcome = report.get("outcome")
        self.reason = report.get("reason")
        self.carried = dict(
            (c["name"], ("module " + c["module"] if c.get("module") else c["type"], c["size"]))
            for c in report.get("carried", []))
        self.skipped = dict(report.get("skipped", {}))
        self.bytes = report.get("bytes", 0)
        self.seconds = report.get("seconds", 0.0)
        self.serializer = report.get("serializer")
        self.source = report.get("source")
        self.target = report.get("target")

    @staticmethod
    def _size(n: int) -> str:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if n >= size:
                return "%.1f %s" % (n / float(size), unit)
        return "%d bytes" % n

    def __repr__(self) -> str:
        head = "Variables carried from %s to %s: %s, %d carried, %d skipped, %s in %.2f s" % (
            self.source, self.target, self.outcome, len(self.carried), len(self.skipped),
            self._size(self.bytes), self.seconds)
        if self.serializer:
            head += " (%s)" % self.serializer
        lines = [head]
        if self.reason:
            lines.append("  why: %s" % self.reason)
        shown = 0
        carried = ["%s (%s, %s)" % (n, t, self._size(s)) for n, (t, s) in sorted(self.carried.items())]
        skipped = ["%s: %s" % (n, why) for n, why in sorted(self.skipped.items())]
        for title, rows in (("carried", carried), ("skipped", skipped)):
            if rows:
                lines.append("  %s:" % title)
            for row in rows:
                if shown == 60:
                    lines.append("    ... (see .carried and .skipped)")
                    shown += 1
                if shown < 60:
                    lines.append("    " + row)
                    shown += 1
        return "\n".join(lines)


class _End(object):
    """One kernel's end of one carry's comm."""

    def __init__(self, shell: Any, comm: Any, ttl: float) -> None:
        self.shell = shell
        self.comm = comm
        # Whatever happens to the mixer, what this end holds is let go after ``ttl``.
        self.timer = threading.Timer(ttl, self.free)
        self.timer.daemon = True
        self.timer.start()

    def free(self) -> None:
        pass

    def handle(self, op: object, data: dict[str, Any], buffers: list[Any]
               ) -> tuple[dict[str, Any], list[Any] | None]:
        raise NotImplementedError

    def on_close(self, msg: Any) -> None:
        self.timer.cancel()
        self.free()

    def on_msg(self, msg: dict[str, Any]) -> None:
        content = msg.get("content") or {}
        data = content.get("data") or {}
        try:
            reply, buffers = self.handle(data.get("op"), data, msg.get("buffers") or [])
        except Exception as exc:
            self.free()
            reply, buffers = {"op": "error", "message": _short(exc)}, None
        if reply is not None:
            self.comm.send(reply, buffers=buffers)


class _SourceEnd(_End):
    source: Source | None = None

    def free(self) -> None:
        self.source = None

    def handle(self, op: object, data: dict[str, Any], buffers: list[Any]
               ) -> tuple[dict[str, Any], list[Any] | None]:
        if op == "serialize":
            self.source = Source(self.shell.user_ns, self.shell.user_ns_hidden, data["serializer"],
                                 data["protocol"], data["cap"], data["chunk"])
            return self.source.manifest(), None
        if op == "pull":
            if self.source is None:
                raise CarryError("nothing to pull (not serialized, or let go)")
            seq = data.get("seq")
            return {"op": "chunk", "seq": seq}, [self.source.pull(seq)]
        raise CarryError("unknown op %r" % (op,))


class _TargetEnd(_End):
    sink: Sink | None = None

    def free(self) -> None:
        self.sink = None

    def handle(self, op: object, data: dict[str, Any], buffers: list[Any]
               ) -> tuple[dict[str, Any], list[Any] | None]:
        if op == "manifest":
            self.sink = Sink(self.shell.user_ns, data.get("values") or [])
            restored, failed = self.sink.import_modules(data.get("modules") or {})
            return {"op": "ack", "seq": -1, "restored": restored, "failed": failed}, None
        if op == "chunk":
            if self.sink is None:
                raise CarryError("a chunk without a manifest (or after the carry was let go)")
            restored, failed = self.sink.feed(buffers)
            return {"op": "ack", "seq": data.get("seq"), "restored": restored, "failed": failed}, None
        if op == "finish":
            self.free()
            self.shell.user_ns[REPORT_VARIABLE] = CarryReport(data.get("report") or {})
            return {"op": "done"}, None
        raise CarryError("unknown op %r" % (op,))


def install(role: str, target_name: str, ttl: float) -> None:
    """Register the comm target of one carry in this kernel (the engine's cell calls
    this). The first comm opened to it gets a ``hello``; the target is then removed."""
    from IPython import get_ipython

    shell = get_ipython()
    manager = shell.kernel.comm_manager
    end_class = _SourceEnd if role == "source" else _TargetEnd

    def opened(comm: Any, msg: Any) -> None:
        with contextlib.suppress(Exception):
            manager.unregister_target(target_name, opened)
        end = end_class(shell, comm, ttl)
        comm.on_msg(end.on_msg)
        comm.on_close(end.on_close)
        comm.send(hello())

    manager.register_target(target_name, opened)
