"""Section 3 of the benchmark: REST listings through the mixer against the slower
backend alone, with fast and slow fakes, and a remote that is blackholed (accepts TCP,
never answers), recovers, and is blackholed again under a warm mixer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from bench.driver import DEFAULT_MIXER, Bench, Fake, Meter, Mixer, Target, direct_headers, pct
from bench.load import get_json, kernel_ids, spec_names, t_pollers, t_rest

SCENARIOS = (("both_fast", 0, 0), ("remote_200ms", 0, 200), ("local_100ms_remote_200ms", 100, 200))
LISTINGS = ("/api/kernelspecs", "/api/kernels")
POLLERS = {"1 poller": 1, "10 pollers": 10}
EXTRA_BACKENDS = ("extra1", "extra2")  # besides local and remote, from the flags


async def section_rest(bench: Bench) -> dict:
    bench.log("3. REST listings")
    sec: dict = {}
    for name, local_delay, remote_delay in SCENARIOS:
        sec[name] = await rest_scenario(bench, name, local_delay, remote_delay)
    sec["pollers"] = await section_pollers(bench)
    if bench.mixers:
        sec["blackhole"] = {label: await blackhole(bench, label, cmd) for label, cmd in bench.mixers}
    return sec


async def cold_answers(bench: Bench, target: Target) -> dict:
    """First answers from a fresh mixer (cold caches)."""
    cold = {}
    async with bench.session() as sess:
        for path in LISTINGS:
            try:
                status, _, elapsed = await get_json(sess, target, path)
                cold[path] = {"ms": 1e3 * elapsed, "status": status}
            except Exception as exc:
                cold[path] = {"error": repr(exc)}
    return cold


def listing_checks(
    mixed: bool, local_ids: list[str], remote_ids: list[str], slower_ids: list[str]
) -> dict[str, Callable[[object, bool], bool]]:
    """Per path, whether an answer (direct or merged) lists what it must."""

    def specs_ok(data: object, direct: bool) -> bool:
        names = spec_names(data)
        if direct:
            return "python3" in names
        return not mixed or {"local-python3", "remote-python3"} <= names

    def kernels_ok(data: object, direct: bool) -> bool:
        ids = kernel_ids(data)
        if direct:
            return set(slower_ids) <= ids
        return set(local_ids + remote_ids) <= ids

    return {"/api/kernelspecs": specs_ok, "/api/kernels": kernels_ok}


async def rest_scenario(bench: Bench, name: str, local_delay: float, remote_delay: float) -> dict:
    p = bench.profile
    n = p.rest_fast_n if max(local_delay, remote_delay) == 0 else p.rest_slow_n
    local, remote = Fake(bench, f"local-{name}"), Fake(bench, f"remote-{name}")
    await asyncio.gather(local.start(local_delay), remote.start(remote_delay))
    local_ids = [await local.start_kernel(), await local.start_kernel("echo")]
    remote_ids = [await remote.start_kernel(), await remote.start_kernel("echo")]
    slower, slower_ids = (remote, remote_ids) if remote_delay >= local_delay else (local, local_ids)
    targets = [Target("direct", slower.url, direct_headers(), roles={"backend": slower.pid})]
    running: list[Mixer] = []
    out: dict = {"local_delay_ms": local_delay, "remote_delay_ms": remote_delay, "direct": slower.label,
                 "cold": {}, "tests": {}}
    try:
        for label, template in bench.mixers:
            mixer = await Mixer(bench, label, template).start(name, local.port, remote.port)
            running.append(mixer)
            targets.append(Target(label, mixer.url, mixer.headers, "", {"mixer": mixer.pid}, mixer))
            out["cold"][label] = await cold_answers(bench, targets[-1])
        checks = listing_checks(bool(bench.mixers), local_ids, remote_ids, slower_ids)
        for path, check in checks.items():
            out["tests"][path] = await bench.rounds(
                f"{name} GET {path}",
                targets,
                p.rest_rounds,
                lambda s, t, m, path=path, check=check: t_rest(
                    s, t, m, path, n, lambda d, t=t, check=check: check(d, t.mixer is None)
                ),
            )
        out["remote_stats"] = stats = await remote.stats()
        out["mixers"] = {m.label: bench.finish_mixer(m, f"rest-{name}", stats) for m in running}
    finally:
        for m in running:
            if m.proc is not None:
                m.finish()
        local.stop()
        remote.stop()
    return out


# -- blackholed remote -----------------------------------------------------------------


async def blackhole(bench: Bench, label: str, template: str) -> dict:
    """Remote blackholed at start, recovers, then blackholed again while warm."""
    p = bench.profile
    bench.log(f"  blackholed remote ({label})")
    local, remote = Fake(bench, "local-bh"), Fake(bench, "remote-bh")
    await asyncio.gather(local.start(), remote.start(blackhole=True))
    local_kernel = await local.start_kernel()
    mixer = await Mixer(bench, label, template).start("blackhole", local.port, remote.port)
    target = Target(label, mixer.url, mixer.headers, "", {"mixer": mixer.pid}, mixer)
    out: dict = {}
    try:
        async with bench.session() as sess:
            out["cold"] = await blackholed_answers(sess, target, local_kernel, p.later_s)
            # Un-blackhole: a normal fake on the same port.
            remote.stop()
            await remote.start()
            out["recovery_s"] = await until_remote_back(sess, target, p.recover_cap_s)
            out["recovery_kernels_s"] = await until_remote_back(
                sess, target, p.recover_cap_s, kernels=True, remote=remote
            )
            # Warm mixer, remote blackholed again.
            for _ in range(3):
                for path in LISTINGS:
                    await get_json(sess, target, path)
            remote.stop()
            await remote.start(blackhole=True)
            out["warm"] = await blackholed_answers(sess, target, local_kernel, p.later_s)
        out["mixer"] = bench.finish_mixer(mixer, "rest-blackhole", {})
    finally:
        if mixer.proc is not None:
            mixer.finish()
        local.stop()
        remote.stop()
    bench.log(f"  blackhole: {json.dumps(out)[:600]}")
    return out


async def blackholed_answers(
    sess: aiohttp.ClientSession, target: Target, local_kernel: str, later_s: float
) -> dict:
    """The first answer to each listing, then ``later_s`` seconds of further answers."""
    out: dict = {}
    for path in LISTINGS:
        out["first_" + path.rsplit("/", 1)[1]] = await probe(sess, target, path, local_kernel)
    later: list[dict] = []
    deadline = time.monotonic() + later_s
    while time.monotonic() < deadline and len(later) < 1000:
        for path in LISTINGS:
            later.append(await probe(sess, target, path, local_kernel))
        await asyncio.sleep(0.05)
    times = [x["ms"] for x in later if "ms" in x]
    out["later"] = {
        "n": len(later),
        "p50_ms": pct(times, 50),
        "max_ms": max(times, default=float("nan")),
        "all_ok": all(x.get("status") == 200 and x.get("local_listed") for x in later),
    }
    return out


async def probe(sess: aiohttp.ClientSession, target: Target, path: str, local_kernel: str) -> dict:
    try:
        status, data, elapsed = await get_json(sess, target, path, timeout=15)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:200], "ms": 15000.0}
    if path.endswith("kernelspecs"):
        listed = "local-python3" in spec_names(data)
    else:
        listed = local_kernel in kernel_ids(data)
    return {"ms": 1e3 * elapsed, "status": status, "local_listed": listed}


async def until_remote_back(
    sess: aiohttp.ClientSession, target: Target, cap: float, kernels: bool = False, remote: Fake | None = None
) -> float | None:
    """Seconds from now until the remote's specs (or a new remote kernel) are listed."""
    wanted = await remote.start_kernel() if kernels and remote is not None else None
    path = "/api/kernels" if kernels else "/api/kernelspecs"
    t0 = time.monotonic()
    while time.monotonic() - t0 < cap:
        with contextlib.suppress(Exception):
            _, data, _ = await get_json(sess, target, path, timeout=5)
            if (wanted in kernel_ids(data)) if kernels else ("remote-python3" in spec_names(data)):
                return time.monotonic() - t0
        await asyncio.sleep(0.1)
    return None


# -- pollers ---------------------------------------------------------------------------


def pollers_config(bench: Bench, extra: list[Fake]) -> Path:
    """A mixer config file adding backends without auth to the flags' local and remote."""
    lines = []
    for name, fake in zip(EXTRA_BACKENDS, extra, strict=True):
        lines += ["[[backends]]", f'name = "{name}"', f'display_suffix = " ({name})"',
                  f'url = "{fake.url}/"', 'auth = "none"', 'sessions = "backend"', ""]
    path = bench.tmp / "pollers.toml"
    path.write_text("\n".join(lines))
    return path


async def backend_requests(fakes: list[Fake]) -> int:
    stats = await asyncio.gather(*(fake.stats() for fake in fakes))
    return sum(s.get("requests", 0) for s in stats)


async def section_pollers(bench: Bench) -> dict:
    """``GET /api/kernels`` through a mixer with 4 fast backends, from 1 client and from
    10 at once: latency, mixer CPU and backend requests per listing (issue 12 item 4).
    Only for this package's mixer (other command lines may not read ``--config``)."""
    p = bench.profile
    fakes = [Fake(bench, f"poll-{name}") for name in ("local", "remote", *EXTRA_BACKENDS)]
    await asyncio.gather(*(fake.start() for fake in fakes))
    ids = {await fake.start_kernel() for fake in fakes for _ in range(2)}
    out: dict = {"backends": len(fakes), "total": p.poll_total, "tests": {}}
    running: list[Mixer] = []

    async def run(s: aiohttp.ClientSession, t: Target, m: Meter) -> dict:
        before = await backend_requests(fakes)
        res = await t_pollers(
            s, t, m, POLLERS[t.name], p.poll_total, "/api/kernels", lambda d: ids <= kernel_ids(d)
        )
        res["backend_requests_per_listing"] = (await backend_requests(fakes) - before) / max(1, res["msgs"])
        return res

    try:
        for label, template in bench.mixers:
            if template != DEFAULT_MIXER:
                continue
            mixer = Mixer(bench, label, DEFAULT_MIXER + " --config {config}")
            mixer.config = pollers_config(bench, fakes[2:])
            running.append(await mixer.start("pollers", fakes[0].port, fakes[1].port))
            roles = {"mixer": mixer.pid}
            targets = [Target(name, mixer.url, mixer.headers, "", roles, mixer) for name in POLLERS]
            test = f"pollers x {len(fakes)} backends ({label})"
            out["tests"][label] = await bench.rounds(test, targets, p.rest_rounds, run)
            bench.finish_mixer(mixer, "rest-pollers", await fakes[1].stats())
    finally:
        for m in running:
            if m.proc is not None:
                m.finish()
        for fake in fakes:
            fake.stop()
    return out
