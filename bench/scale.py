"""Scale (issue 20 item 5): how the mixer's costs grow with kernels, backends,
websockets and the state file. Only when named (``bench/run.py --sections scale``), or
on its own::

    .venv/bin/python -m bench.scale --quick      # about 2 to 3 minutes
    .venv/bin/python -m bench.scale              # adds 16 backends x 5,000 kernels

1. **Listings**: ``GET /api/kernels`` through a mixer with ``--listing-window 0`` (every
   listing asks every backend) for 10, 100, 1,000 and 5,000 kernels per backend across
   1, 4 and 16 fake backends (``python -m tests.fakes``; the first is the flags' local
   backend, the others come from a ``--config`` file); sequential listings from one
   client after two warm-up listings (the first learns the kernels): p50/p90, the
   mixer's CPU per listing and per kernel listed (its process CPU clock), its RSS.
   One backend's own listing (direct) is timed for scale. ``--quick`` leaves out 16 x
   5,000.
2. **Websockets**: 10, 100, 1,000 and 5,000 kernel websockets (each to a kernel of its
   own) open at once through one mixer to a fake echo backend, opened 100 at a time
   and kept open from one size to the next: the mixer's RSS over its RSS before any
   (per websocket), one 1 KiB round trip on every open websocket (p50/p99), errors.
   This process raises its own RLIMIT_NOFILE to the hard limit first (the servers
   inherit it); sizes the limit cannot hold are skipped and the report says so.
3. **State file** with 10,000 kernels (two backends' 5,000 each, owners in the file as
   a mixer writes it, ``notebook_kernels_mixer.state``): the time from starting the
   mixer until it answers ``GET /api/kernelspecs``, its RSS then and after its first
   listing; the same with a new (empty) state file for comparison.

The report fits a line to each series (least squares: the slope is what every more
kernel or websocket costs) and says what grows linearly; it writes ``scale.png``
(listing latency against kernels per backend, one line per backend count; mixer RSS
against open websockets) into the run's results folder when matplotlib is installed
(``pip install -e '.[bench]'``), and says so when not.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType

from bench.driver import TOKEN, XSRF, Bench, Fake, Mixer, pct
from bench.load import loads
from bench.procs import cpu_seconds, status_kb, system_cpu
from bench.render_scale import plot
from bench.report import fmt
from notebook_kernels_mixer.processes import gateway_headers
from notebook_kernels_mixer.state import StateStore

KERNELS = (10, 100, 1000, 5000)  # per backend
BACKENDS = (1, 4, 16)
WEBSOCKETS = (10, 100, 1000, 5000)
STATE_KERNELS = 10_000
MIXER = (
    "{python} -m notebook_kernels_mixer --port {port} --jupyter-port {jupyter_port}"
    " --jupyter-token {token} --listing-window 0 --log-level warning"
)
KIB = b"s" * 1024
FD_MARGIN = 256  # descriptors a process needs besides its connections


@dataclass(frozen=True)
class ScaleProfile:
    cell_s: float  # time spent on the timed listings of one (kernels, backends) cell
    min_listings: int
    max_listings: int
    skip: frozenset[tuple[int, int]]  # (kernels per backend, backends) left out


QUICK = ScaleProfile(1.5, 4, 60, frozenset({(5000, 16)}))
FULL = ScaleProfile(3.0, 8, 300, frozenset())


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


def raise_nofile() -> tuple[int, int]:
    """This process's soft RLIMIT_NOFILE raised to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Backends:
    """The fake backends of the section and how many kernels each holds."""

    def __init__(self, bench: Bench, n: int) -> None:
        self.bench = bench
        self.fakes = [Fake(bench, "scale-local" if i == 0 else f"scale-b{i}") for i in range(n)]
        self.counts = [0] * n

    async def start(self) -> None:
        await asyncio.gather(*(f.start() for f in self.fakes))

    def stop(self) -> None:
        for fake in self.fakes:
            fake.stop()

    async def fill(self, n_backends: int, n: int) -> None:
        """The first ``n_backends`` fakes hold at least ``n`` kernels each (started on
        the fakes directly; a mixer learns them from its first listing)."""

        async def one(i: int) -> None:
            url = self.fakes[i].url + "/api/kernels"
            while self.counts[i] < n:
                batch = min(64, n - self.counts[i])
                await asyncio.gather(*(post(url) for _ in range(batch)))
                self.counts[i] += batch

        async def post(url: str) -> None:
            async with self.bench.http.post(url, json={"name": "python3"}) as r:
                r.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(n_backends)))

    async def ids(self, i: int) -> list[str]:
        async with self.bench.http.get(self.fakes[i].url + "/api/kernels") as r:
            r.raise_for_status()
            return [k["id"] for k in await r.json()]

    def config(self, n_backends: int) -> Path:
        """A mixer config file adding fakes 1 .. n_backends-1 (no auth) to the local."""
        lines = []
        for fake in self.fakes[1:n_backends]:
            name = fake.label.removeprefix("scale-")
            lines += [
                "[[backends]]",
                f'name = "{name}"',
                f'display_suffix = " ({name})"',
                f'url = "{fake.url}/"',
                'auth = "none"',
                'sessions = "backend"',
                "",
            ]
        path = self.bench.tmp / f"scale-{n_backends}.toml"
        path.write_text("\n".join(lines))
        return path

    async def mixer(self, name: str, n_backends: int, extra: str = "") -> Mixer:
        template = MIXER + (" --config {config}" if n_backends > 1 else "") + extra
        mixer = Mixer(self.bench, "scale", template)
        if n_backends > 1:
            mixer.config = self.config(n_backends)
        return await mixer.start(name, self.fakes[0].port, 0)


async def timed_listings(
    sess: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    expect: int,
    pid: int | None,
    prof: ScaleProfile,
) -> dict:
    """Sequential ``GET url`` for about ``prof.cell_s`` seconds: latency, CPU of ``pid``
    per listing and per kernel, other CPU on the machine meanwhile."""
    lat: list[float] = []
    errors = 0
    busy0, _ = system_cpu()
    c0 = cpu_seconds(pid) if pid else 0.0
    me0 = time.process_time()
    t0 = time.perf_counter()
    while len(lat) < prof.max_listings and (
        len(lat) < prof.min_listings or time.perf_counter() - t0 < prof.cell_s
    ):
        s = time.perf_counter()
        async with sess.get(url, headers=headers) as r:
            body = loads(await r.read()) if r.status == 200 else None
        lat.append(time.perf_counter() - s)
        errors += not isinstance(body, list) or len(body) != expect
    wall = time.perf_counter() - t0
    cpu = (cpu_seconds(pid) - c0) if pid else 0.0
    other = (system_cpu()[0] - busy0) - cpu - (time.process_time() - me0)
    n = len(lat)
    return {
        "listings": n,
        "p50_ms": 1e3 * pct(lat, 50),
        "p90_ms": 1e3 * pct(lat, 90),
        "cpu_ms": 1e3 * cpu / n,
        "us_per_kernel": 1e6 * cpu / n / max(1, expect),
        "errors": errors,
        "other_cpu_pct": max(0.0, 100 * other / wall),
    }


async def listings(bench: Bench, backends: Backends, prof: ScaleProfile) -> list[dict]:
    rows: list[dict] = []
    headers = gateway_headers(TOKEN, XSRF)
    async with bench.session() as sess:
        for n in KERNELS:
            wanted = [b for b in BACKENDS if (n, b) not in prof.skip]
            t0 = time.monotonic()
            await backends.fill(max(wanted), n)
            bench.log(f"  {n} kernels on each of {max(wanted)} backends ({time.monotonic() - t0:.1f} s)")
            fake0 = backends.fakes[0]
            direct = await timed_listings(
                sess, fake0.url + "/api/kernels", {}, backends.counts[0], fake0.pid, prof
            )
            for b in BACKENDS:
                row: dict = {"kernels": n, "backends": b, "total": n * b, "direct_p50_ms": direct["p50_ms"]}
                if b not in wanted:
                    rows.append({**row, "skipped": "left out by --quick"})
                    continue
                expect = sum(backends.counts[:b])
                row["total"] = expect
                mixer = await backends.mixer(f"list-{n}x{b}", b)
                try:
                    url = mixer.url + "/api/kernels"
                    warm = await timed_listings(
                        sess, url, headers, expect, None, ScaleProfile(0, 2, 2, frozenset())
                    )
                    res = await timed_listings(sess, url, headers, expect, mixer.pid, prof)
                    res["errors"] += warm["errors"]
                    res["rss_mb"] = rss_mb(mixer.pid)
                finally:
                    mixer.finish()
                rows.append({**row, **res})
                bench.log(
                    f"  {n:>5} x {b:>2}: p50 {res['p50_ms']:.2f} ms, mixer CPU {res['cpu_ms']:.2f} ms "
                    f"per listing ({res['us_per_kernel']:.2f} us per kernel), RSS {res['rss_mb']:.0f} MB"
                )
    return rows


async def websockets(bench: Bench, backends: Backends) -> dict:
    soft, hard = raise_nofile()
    # Each websocket holds 2 descriptors in the mixer (client and backend legs), 1 here.
    allowed = [n for n in WEBSOCKETS if 2 * n + FD_MARGIN <= soft]
    out: dict = {"nofile": [soft, hard], "rows": [], "skipped": [n for n in WEBSOCKETS if n not in allowed]}
    if not allowed:
        return out
    await backends.fill(1, max(allowed))
    ids = (await backends.ids(0))[: max(allowed)]
    mixer = await backends.mixer("ws", 1)
    headers = gateway_headers(TOKEN, XSRF)
    opened: list[aiohttp.ClientWebSocketResponse] = []
    sess = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    try:
        async with sess.get(mixer.url + "/api/kernels", headers=headers) as r:  # learn the kernels
            await r.read()
        base_url = "ws" + mixer.url[4:] + "/api/kernels/{}/channels?session_id=scale{}"

        async def connect(i: int) -> aiohttp.ClientWebSocketResponse:
            return await sess.ws_connect(
                base_url.format(ids[i], i),
                headers=headers,
                max_msg_size=0,
                compress=0,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=3.0),
                decode_text=False,
            )

        warm = await connect(0)
        await warm.send_frame(KIB, WSMsgType.TEXT)
        await warm.receive()
        await warm.close()
        await asyncio.sleep(0.5)
        base = rss_mb(mixer.pid)
        out["base_rss_mb"] = base
        open_errors: list[str] = []
        for n in allowed:
            t0 = time.perf_counter()
            while len(opened) + len(open_errors) < n:
                start = len(opened) + len(open_errors)
                batch = range(start, min(n, start + 100))
                got = await asyncio.gather(
                    *(asyncio.wait_for(connect(i), 30) for i in batch), return_exceptions=True
                )
                for g in got:
                    if isinstance(g, BaseException):
                        open_errors.append(f"{type(g).__name__}: {g}"[:200])
                    else:
                        opened.append(g)
            open_s = time.perf_counter() - t0
            await asyncio.sleep(0.5)  # let the mixer settle before reading its RSS
            rss = rss_mb(mixer.pid)
            lat, rt_errors = [], 0
            for ws in opened:
                s = time.perf_counter()
                try:
                    await ws.send_frame(KIB, WSMsgType.TEXT)
                    msg = await asyncio.wait_for(ws.receive(), 10)
                    ok = msg.type is WSMsgType.TEXT and msg.data == KIB
                except Exception:
                    ok = False
                lat.append(time.perf_counter() - s)
                rt_errors += not ok
            row = {
                "websockets": n,
                "open": len(opened),
                "open_errors": len(open_errors),
                "open_s": open_s,
                "rss_mb": rss,
                "kib_per_ws": 1024 * (rss - base) / max(1, len(opened)),
                "p50_us": 1e6 * pct(lat, 50),
                "p99_us": 1e6 * pct(lat, 99),
                "rt_errors": rt_errors,
                "error_samples": sorted(set(open_errors))[:3],
            }
            out["rows"].append(row)
            bench.log(
                f"  {n:>5} websockets: RSS {rss:.1f} MB (+{row['kib_per_ws']:.1f} KiB each), round trip "
                f"p50 {row['p50_us']:.0f} us p99 {row['p99_us']:.0f} us, errors "
                f"{len(open_errors)} + {rt_errors}"
            )
    finally:
        for start in range(0, len(opened), 200):
            await asyncio.gather(
                *(asyncio.wait_for(ws.close(), 5) for ws in opened[start : start + 200]),
                return_exceptions=True,
            )
        await sess.close()
        mixer.finish()
    return out


async def write_state(path: Path, owners: dict[str, str]) -> None:
    """A state file as the mixer writes it, with ``owners`` (kernel id -> backend)."""
    store = await StateStore.open(str(path))
    try:
        for kernel_id, backend in owners.items():
            store.put_kernel(kernel_id, backend)
        await store.flush(60)
    finally:
        await store.close()


async def state_start(bench: Bench, backends: Backends) -> list[dict]:
    half = STATE_KERNELS // 2
    await backends.fill(2, half)
    owners = {k: "local" for k in (await backends.ids(0))[:half]}
    owners.update({k: "b1" for k in (await backends.ids(1))[:half]})
    full = bench.tmp / "state-10k.sqlite"
    await write_state(full, owners)
    headers = gateway_headers(TOKEN, XSRF)
    rows: list[dict] = []
    async with bench.session() as sess:
        for label, path in (
            ("new (empty)", bench.tmp / "state-empty.sqlite"),
            (f"{len(owners):,} kernels", full),
        ):
            t0 = time.perf_counter()
            mixer = await backends.mixer(f"state-{len(rows)}", 2, f" --state-file {path}")
            try:
                startup = None
                while time.perf_counter() - t0 < 60:
                    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                        async with sess.get(
                            mixer.url + "/api/kernelspecs",
                            headers=headers,
                            timeout=aiohttp.ClientTimeout(total=5),
                        ) as r:
                            await r.read()
                            if r.status == 200:
                                startup = time.perf_counter() - t0
                                break
                    await asyncio.sleep(0.01)
                rss_start = rss_mb(mixer.pid)
                s = time.perf_counter()
                async with sess.get(mixer.url + "/api/kernels", headers=headers) as r:
                    listed = len(await r.json(content_type=None)) if r.status == 200 else -1
                first = time.perf_counter() - s
                rows.append(
                    {
                        "state": label,
                        "startup_s": startup,
                        "rss_mb": rss_start,
                        "first_listing_ms": 1e3 * first,
                        "listed": listed,
                        "rss_after_listing_mb": rss_mb(mixer.pid),
                    }
                )
            finally:
                mixer.finish()
            bench.log(
                f"  state {label}: answers after {fmt(rows[-1]['startup_s'])} s, RSS {rss_start:.1f} MB"
            )
    return rows


async def section_scale(bench: Bench) -> dict:
    prof = QUICK if bench.profile.name == "quick" else FULL
    bench.log("scale: listings, websockets, state file (issue 20)")
    n = max(b for b in BACKENDS)
    backends = Backends(bench, n)
    sec: dict = {"profile": prof.__dict__ | {"skip": sorted(prof.skip)}}
    t0 = time.monotonic()
    await backends.start()
    try:
        sec["listings"] = await listings(bench, backends, prof)
        for fake in backends.fakes[2:]:  # the rest needs two backends at most
            fake.stop()
        sec["websockets"] = await websockets(bench, backends)
        sec["state"] = await state_start(bench, backends)
    finally:
        backends.stop()
    sec["duration_s"] = round(time.monotonic() - t0, 1)
    sec["plot"] = plot(sec, bench.out_dir / "scale.png")  # bench/render_scale.py
    return sec


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.scale [--quick] [bench/run.py options]``: this section alone."""
    from bench import run

    return run.main(["--sections", "scale", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
