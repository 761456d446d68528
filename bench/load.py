"""The load the benchmark's client puts on a target: kernel websockets (echo round
trips, pipelined and bulk frames, many connections at once), real kernel executions,
and REST listings.

Each ``t_*`` function takes (client session, target, meter, …), starts the meter
around its timed part only, and returns its figures as a flat dict (``msgs`` = how many
messages the CPU readings are divided by). Frames are sent pre-encoded and text frames
are not decoded, to keep the load generator cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone

import aiohttp
from aiohttp import WSMsgType

from bench.driver import Meter, Target, pct
from bench.procs import listen_overflows

try:
    import orjson

    loads = orjson.loads
except ImportError:  # pragma: no cover
    loads = json.loads

KIB = b"k" * 1024
MIB = os.urandom(1 << 20)

# -- websockets ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def ws_open(
    sess: aiohttp.ClientSession, target: Target, protocols: tuple[str, ...] = ()
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    target.count()
    ws = await sess.ws_connect(
        target.ws_url(),
        headers=target.headers,
        max_msg_size=0,
        compress=0,
        protocols=protocols,
        autoping=True,
        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=3.0),
        decode_text=False,
    )
    try:
        yield ws
    finally:
        await ws.close()


async def round_trip(ws: aiohttp.ClientWebSocketResponse, payload: bytes = KIB) -> bool:
    await ws.send_frame(payload, WSMsgType.TEXT)
    msg = await ws.receive()
    return msg.type is WSMsgType.TEXT and msg.data == payload


async def t_rtt(sess: aiohttp.ClientSession, target: Target, meter: Meter, n: int) -> dict:
    async with ws_open(sess, target) as ws:
        for _ in range(20):
            await round_trip(ws)
        lat, errors = [], 0
        clock = time.perf_counter
        meter.start()
        for _ in range(n):
            t0 = clock()
            ok = await round_trip(ws)
            lat.append(clock() - t0)
            errors += not ok
        meter.stop()
    return {"p50_us": 1e6 * pct(lat, 50), "p99_us": 1e6 * pct(lat, 99), "msgs": n, "errors": errors}


async def pipeline(
    ws: aiohttp.ClientWebSocketResponse, meter: Meter, n: int, window: int, payload: bytes, kind: WSMsgType
) -> float:
    """Send ``n`` frames with at most ``window`` unanswered; the seconds it took, or
    minus the count of wrong echoes."""
    free = asyncio.Semaphore(window)
    bad = 0

    async def reader() -> None:
        nonlocal bad
        for _ in range(n):
            msg = await ws.receive()
            if msg.type is not kind:
                raise RuntimeError(f"unexpected {msg.type.name} frame: {msg.data!r:.200}")
            if len(msg.data) != len(payload):
                bad += 1
            free.release()

    meter.start()
    t0 = time.perf_counter()
    task = asyncio.create_task(reader())
    try:
        for _ in range(n):
            await free.acquire()
            await ws.send_frame(payload, kind)
        await task
    finally:
        task.cancel()
    elapsed = time.perf_counter() - t0
    meter.stop()
    return elapsed if not bad else -bad


async def t_pipelined(sess: aiohttp.ClientSession, target: Target, meter: Meter, n: int, window: int) -> dict:
    async with ws_open(sess, target) as ws:
        for _ in range(20):
            await round_trip(ws)
        elapsed = await pipeline(ws, meter, n, window, KIB, WSMsgType.TEXT)
    if elapsed < 0:
        return {"msgs": n, "errors": -elapsed}
    return {"msg_per_s": n / elapsed, "msgs": n, "errors": 0}


async def t_bulk(sess: aiohttp.ClientSession, target: Target, meter: Meter, n: int, window: int) -> dict:
    async with ws_open(sess, target) as ws:
        for _ in range(2):
            await ws.send_frame(MIB, WSMsgType.BINARY)
            await ws.receive()
        elapsed = await pipeline(ws, meter, n, window, MIB, WSMsgType.BINARY)
    if elapsed < 0:
        return {"msgs": n, "errors": -elapsed}
    return {"mb_per_s": n * len(MIB) / elapsed / 1e6, "msgs": n, "errors": 0}


async def t_many(sess: aiohttp.ClientSession, target: Target, meter: Meter, conns: int, rts: int) -> dict:
    lat: list[float] = []
    connect: list[float] = []
    errors: list[str] = []
    clock = time.perf_counter

    async def one() -> None:
        t0 = clock()
        try:
            async with ws_open(sess, target) as ws:
                connect.append(clock() - t0)
                for _ in range(rts):
                    t1 = clock()
                    ok = await round_trip(ws)
                    lat.append(clock() - t1)
                    if not ok:
                        errors.append("wrong echo")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])

    overflows = listen_overflows()
    meter.start()
    t0 = clock()
    async with asyncio.timeout(120):
        await asyncio.gather(*(one() for _ in range(conns)))
    total = clock() - t0
    meter.stop()
    return {
        "listen_overflows": listen_overflows() - overflows,
        "total_s": total,
        "p99_ms": 1e3 * pct(lat, 99),
        "p50_ms": 1e3 * pct(lat, 50),
        "connect_max_ms": 1e3 * max(connect, default=float("nan")),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "msgs": len(lat),
    }


# -- real kernels ----------------------------------------------------------------------


def execute_request(code: str, session: str) -> tuple[str, bytes]:
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "username": "bench",
        "session": session,
        "msg_type": "execute_request",
        "version": "5.3",
        "date": datetime.now(timezone.utc).isoformat(),
    }
    content = {
        "code": code,
        "silent": False,
        "store_history": False,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    msg = {"header": header, "parent_header": {}, "metadata": {}, "content": content,
           "channel": "shell", "buffers": []}
    return msg_id, json.dumps(msg).encode()


async def execute(ws: aiohttp.ClientWebSocketResponse, code: str, session: str) -> int:
    """Run ``code``; return the stream bytes it printed, once reply and idle are in."""
    msg_id, frame = execute_request(code, session)
    await ws.send_frame(frame, WSMsgType.TEXT)
    replied = idle = False
    printed = 0
    while not (replied and idle):
        msg = await ws.receive()
        if msg.type is not WSMsgType.TEXT:
            if msg.type is WSMsgType.BINARY:
                continue
            raise RuntimeError(f"kernel websocket: {msg.type.name} {msg.data!r:.200}")
        data = loads(msg.data)
        if (data.get("parent_header") or {}).get("msg_id") != msg_id:
            continue
        kind = data.get("msg_type") or data["header"]["msg_type"]
        content = data.get("content") or {}
        if kind == "execute_reply":
            if content.get("status") != "ok":
                raise RuntimeError(f"execution failed: {content}")
            replied = True
        elif kind == "status" and content.get("execution_state") == "idle":
            idle = True
        elif kind == "stream":
            printed += len(content.get("text", ""))
    return printed


async def t_exec_small(
    sess: aiohttp.ClientSession, target: Target, meter: Meter, n: int, protocols: tuple[str, ...] = ()
) -> dict:
    session = uuid.uuid4().hex
    async with ws_open(sess, target, protocols) as ws:
        for _ in range(5):
            await execute(ws, "1+1", session)
        lat = []
        meter.start()
        t0 = time.perf_counter()
        for _ in range(n):
            t1 = time.perf_counter()
            await execute(ws, "1+1", session)
            lat.append(time.perf_counter() - t1)
        total = time.perf_counter() - t0
        meter.stop()
    return {"total_s": total, "p50_ms": 1e3 * pct(lat, 50), "p99_ms": 1e3 * pct(lat, 99)}


async def t_exec_big(sess: aiohttp.ClientSession, target: Target, meter: Meter, mb: int) -> dict:
    session = uuid.uuid4().hex
    code = f"import sys\nfor _ in range({mb}):\n    sys.stdout.write('x' * 999_999 + '\\n')\n"
    async with ws_open(sess, target) as ws:
        await execute(ws, "1+1", session)
        meter.start()
        t0 = time.perf_counter()
        printed = await execute(ws, code, session)
        total = time.perf_counter() - t0
        meter.stop()
    complete = printed >= mb * 1_000_000
    return {
        "total_s": total,
        "mb_per_s": printed / total / 1e6,
        "printed_mb": printed / 1e6,
        "errors": 0 if complete else 1,
    }


# -- REST ------------------------------------------------------------------------------


async def get_json(
    sess: aiohttp.ClientSession, target: Target, path: str, timeout: float = 15
) -> tuple[int, object, float]:
    """(status, decoded body or None, seconds) of one GET."""
    target.count()
    t0 = time.perf_counter()
    async with sess.get(
        target.url + path, headers=target.headers, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as r:
        body = await r.read()
        elapsed = time.perf_counter() - t0
        try:
            data = loads(body) if r.status == 200 else None
        except ValueError:
            data = None
        return r.status, data, elapsed


def spec_names(data: object) -> set[str]:
    if isinstance(data, dict) and isinstance(data.get("kernelspecs"), dict):
        return set(data["kernelspecs"])
    return set()


def kernel_ids(data: object) -> set[str]:
    if isinstance(data, list):
        return {k.get("id") for k in data if isinstance(k, dict)}
    return set()


async def t_rest(
    sess: aiohttp.ClientSession, target: Target, meter: Meter, path: str, n: int,
    check: Callable[[object], bool],
) -> dict:
    lat, errors = [], 0
    meter.start()
    for _ in range(n):
        status, data, elapsed = await get_json(sess, target, path)
        lat.append(elapsed)
        errors += status != 200 or not check(data)
    meter.stop()
    return {
        "p50_ms": 1e3 * pct(lat, 50),
        "p90_ms": 1e3 * pct(lat, 90),
        "errors": errors,
        "msgs": n,
    }


async def t_pollers(
    sess: aiohttp.ClientSession, target: Target, meter: Meter, pollers: int, total: int, path: str,
    check: Callable[[object], bool],
) -> dict:
    """``pollers`` clients listing ``path`` back to back at once (browser tabs polling),
    ``total`` listings in all."""
    lat: list[float] = []
    errors = 0

    async def poller(n: int) -> None:
        nonlocal errors
        for _ in range(n):
            status, data, elapsed = await get_json(sess, target, path)
            lat.append(elapsed)
            errors += status != 200 or not check(data)

    meter.start()
    await asyncio.gather(*(poller(total // pollers) for _ in range(pollers)))
    meter.stop()
    return {"p50_ms": 1e3 * pct(lat, 50), "p90_ms": 1e3 * pct(lat, 90), "errors": errors, "msgs": len(lat)}
