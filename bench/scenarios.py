"""Sections 1 and 2 of the benchmark: the kernel websocket relay over fast fake
backends, and real kernels behind jupyter_server. Each section starts what it needs,
runs its tests in interleaved rounds (``Bench.rounds``) and stops everything it started.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping

from bench.driver import HERE, TOKEN, Bench, Fake, Mixer, Target, direct_headers
from bench.goorig import NAME as GO_NAME
from bench.goorig import go_headers, start_go_original
from bench.load import t_bulk, t_exec_big, t_exec_small, t_many, t_pipelined, t_rtt
from bench.nginx import start_nginx
from notebook_kernels_mixer.processes import Process, free_port, jupyter_server_launch

# -- section 1 -------------------------------------------------------------------------


async def start_splice(bench: Bench, backend: Fake, kernel: str) -> tuple[Target, Process]:
    """Reference: a byte-for-byte TCP forwarder to the same backend (not a mixer)."""
    port = free_port()
    cmd = [sys.executable, str(HERE / "splice_proxy.py"), "--port", str(port), "--to", str(backend.port)]
    splice = await bench.procs.launch("ref-splice", cmd, port=port)
    roles = {"mixer": splice.pid, "backend": backend.pid}
    return Target("ref-splice", f"http://127.0.0.1:{port}", direct_headers(), kernel, roles), splice


async def mixer_targets(
    bench: Bench, section: str, local: Fake, remote: Fake
) -> tuple[list[Target], list[Mixer]]:
    """Every mixer under test, with one target per backend (a kernel started through it)."""
    targets, running = [], []
    for label, template in bench.mixers:
        mixer = await Mixer(bench, label, template).start(section, local.port, remote.port)
        running.append(mixer)
        for side, fake in (("local", local), ("remote", remote)):
            kid = await bench.mixer_kernel(mixer, f"{side}-python3")
            roles = {"mixer": mixer.pid, "backend": fake.pid}
            targets.append(Target(f"{label}:{side}", mixer.url, mixer.headers, kid, roles, mixer))
    return targets, running


async def ws_tests(bench: Bench, targets: list[Target]) -> dict:
    p = bench.profile
    return {
        "rtt": await bench.rounds(
            "1 KiB round trip", targets, p.ws_rounds, lambda s, t, m: t_rtt(s, t, m, p.rtt_n)
        ),
        "pipelined": await bench.rounds(
            "pipelined 1 KiB",
            targets,
            p.ws_rounds,
            lambda s, t, m: t_pipelined(s, t, m, p.pipe_n, p.pipe_window),
        ),
        "bulk": await bench.rounds(
            "1 MiB binary", targets, p.ws_rounds, lambda s, t, m: t_bulk(s, t, m, p.bulk_n, p.bulk_window)
        ),
        "many": await bench.rounds(
            f"{p.conns} connections",
            targets,
            p.many_rounds,
            lambda s, t, m: t_many(s, t, m, p.conns, p.conn_rts),
        ),
    }


async def section_ws(bench: Bench) -> dict:
    bench.log("1. websocket relay (fast fake backends)")
    local, remote = Fake(bench, "local"), Fake(bench, "remote")
    await asyncio.gather(local.start(), remote.start())
    local_kernel = await local.start_kernel()
    targets = [Target("direct", local.url, direct_headers(), local_kernel, {"backend": local.pid})]
    references, notes = [], []
    if not bench.args.no_reference:
        target, splice = await start_splice(bench, local, local_kernel)
        targets.append(target)
        references.append(splice)
        nginx = await start_nginx(bench, local.port)
        if nginx is not None:
            proc, port = nginx
            roles = {"mixer": proc.pid, "backend": local.pid}
            url = f"http://127.0.0.1:{port}"
            targets.append(Target("ref-nginx", url, direct_headers(), local_kernel, roles))
            references.append(proc)
        go, note = await start_go_original(bench, local.port, remote.port, local_kernel)
        bench.log(f"  {note}")
        notes.append(note)
        if go is not None:
            proc, url = go
            roles = {"mixer": proc.pid, "backend": local.pid}
            targets.append(Target(GO_NAME, url, go_headers(), local_kernel, roles))
            references.append(proc)
    mixed, running = await mixer_targets(bench, "ws", local, remote)
    sec: dict = {"tests": await ws_tests(bench, targets + mixed), "notes": notes}
    sec["remote_stats"] = await remote.stats()
    sec["mixers"] = {m.label: bench.finish_mixer(m, "ws", sec["remote_stats"]) for m in running}
    for proc in references:
        bench.procs.stop(proc)
    local.stop()
    remote.stop()
    return sec


# -- section 2 -------------------------------------------------------------------------


async def start_jupyter(
    bench: Bench, name: str, *extra: str, gateway_url: str | None = None,
    gateway: Mapping[str, str] | None = None,
) -> tuple[Process, int]:
    """A jupyter_server of this run (IOPub rate limit off, token = the run's, Jupyter
    directories of its own), ready; ``extra`` options added; ``gateway_url`` and
    ``gateway`` (headers): a front with its kernels there."""
    port = free_port()
    argv, env = jupyter_server_launch(
        port, env=os.environ, token=TOKEN, home=bench.tmp / name,
        gateway_url=gateway_url, gateway=gateway,
        extra_args=["--ZMQChannelsWebsocketConnection.limit_rate=False", "--ServerApp.log_level=WARN",
                    *extra],
    )  # fmt: skip
    return await bench.procs.launch(name, argv, env, port=port, timeout=60), port


async def direct_kernel(bench: Bench, url: str) -> str:
    """Start a python3 kernel straight on a jupyter_server."""
    async with bench.http.post(url + "/api/kernels", json={"name": "python3"}, headers=direct_headers()) as r:
        r.raise_for_status()
        return (await r.json())["id"]


async def kernel_tests(bench: Bench, targets: list[Target]) -> dict:
    p = bench.profile
    return {
        "exec_small": await bench.rounds(
            f"{p.exec_n} x 1+1", targets, p.kernel_rounds, lambda s, t, m: t_exec_small(s, t, m, p.exec_n)
        ),
        "exec_big": await bench.rounds(
            f"{p.big_mb} MB cell", targets, p.kernel_rounds, lambda s, t, m: t_exec_big(s, t, m, p.big_mb)
        ),
    }


async def section_kernel(bench: Bench) -> dict:
    bench.log("2. real kernels (jupyter_server + ipykernel)")
    remote = Fake(bench, "remote-k")
    (jupyter, jport), _ = await asyncio.gather(start_jupyter(bench, "jupyter_server"), remote.start())
    jurl = f"http://127.0.0.1:{jport}"
    sec: dict = {"tests": {}, "exec_n": bench.profile.exec_n}
    try:
        running, targets = [], []
        for label, template in bench.mixers:
            mixer = await Mixer(bench, label, template).start("kernel", jport, remote.port)
            running.append(mixer)
            kid = await bench.mixer_kernel(mixer, "local-python3")
            roles = {"mixer": mixer.pid, "backend": jupyter.pid}
            targets.append(Target(f"{label}:local", mixer.url, mixer.headers, kid, roles, mixer))
        kid = targets[0].kernel_id if targets else await direct_kernel(bench, jurl)
        targets.insert(0, Target("direct", jurl, direct_headers(), kid, {"backend": jupyter.pid}))
        sec["tests"] = await kernel_tests(bench, targets)
        stats = await remote.stats()
        sec["mixers"] = {m.label: bench.finish_mixer(m, "kernel", stats) for m in running}
    finally:
        remote.stop()
        bench.procs.stop(jupyter, timeout=15)
    return sec
