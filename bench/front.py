"""Section 5 of the benchmark, "through the front" (issue 12): the ``1+1`` round trip
over the kernel websocket of the Jupyter server the user's browser talks to.

Interleaved in one run:

* ``stock``: a stock jupyter_server running the kernel itself (what ``jupyter lab``
  serves), without TCP_NODELAY on its kernel websockets;
* ``stock+nodelay``: the same with the package's jupyter_server extension
  ``notebook_kernels_mixer.jupyter`` enabled (it sets TCP_NODELAY), when the package
  has it;
* ``<mixer>:lab``: ``mixer lab``'s topology: a front jupyter_server with
  ``--GatewayClient.url`` pointing at the mixer, the mixer, and a local jupyter_server
  running the kernel (the extension on both servers when present, as ``mixer lab``
  enables it).

The front is a plain jupyter_server: JupyterLab's server extension serves the UI and
does not touch kernel websockets. The client speaks the legacy (JSON) kernel protocol
everywhere, so the configurations differ only in their hops.
"""

from __future__ import annotations

import asyncio
import importlib.util

from bench.driver import TOKEN, XSRF, Bench, Fake, Mixer, Target, direct_headers
from bench.load import t_exec_small
from bench.scenarios import direct_kernel, start_jupyter
from notebook_kernels_mixer.processes import Process, gateway_headers

EXTENSION = "notebook_kernels_mixer.jupyter"


def extension_present() -> bool:
    try:
        return importlib.util.find_spec(EXTENSION) is not None
    except ImportError:
        return False


def extension_args(present: bool) -> list[str]:
    """The option that loads the extension, as ``mixer lab`` passes it."""
    return [f"--ServerApp.jpserver_extensions={EXTENSION}=True"] if present else []


async def start_front(bench: Bench, mixer: Mixer, ext: list[str]) -> tuple[Process, int]:
    """A jupyter_server in gateway mode in front of ``mixer``, as ``mixer lab`` starts it
    (SPEC §1's GatewayClient headers in its environment, as they hold the token)."""
    return await start_jupyter(bench, f"front-{mixer.label}", *ext, gateway_url=f"{mixer.url}/",
                               gateway=gateway_headers(TOKEN, XSRF))  # fmt: skip


async def stock_targets(bench: Bench, servers: dict[str, tuple[Process, int]]) -> list[Target]:
    """A kernel on each stock server (with and without the TCP_NODELAY extension)."""
    targets = []
    for name, (proc, port) in servers.items():
        url = f"http://127.0.0.1:{port}"
        kid = await direct_kernel(bench, url)
        targets.append(Target(name, url, direct_headers(), kid, {"backend": proc.pid}))
    return targets


async def lab_targets(
    bench: Bench, ext: list[str], local_port: int, local_pid: int, remote: Fake
) -> tuple[list[Target], list[Mixer], list[Process]]:
    """For every mixer under test: the mixer and its front, and a kernel on the local
    server started through the front."""
    targets, mixers, fronts = [], [], []
    for label, template in bench.mixers:
        mixer = await Mixer(bench, label, template).start("front", local_port, remote.port)
        mixers.append(mixer)
        front, port = await start_front(bench, mixer, ext)
        fronts.append(front)
        url = f"http://127.0.0.1:{port}"
        kid = await bench.post_kernel(url, direct_headers(), "local-python3", f"front-{label}")
        roles = {"front": front.pid, "mixer": mixer.pid, "backend": local_pid}
        targets.append(Target(f"{label}:lab", url, direct_headers(), kid, roles, mixer))
    return targets, mixers, fronts


async def start_servers(bench: Bench, ext: list[str]) -> dict[str, tuple[Process, int]]:
    """The lab topology's local server and the stock ones, all at once (start-up is the
    slow part of this section)."""
    configs = {"local": ext, "stock": [], **({"stock+nodelay": ext} if ext else {})}
    started = await asyncio.gather(*(start_jupyter(bench, f"jupyter-{n}", *a) for n, a in configs.items()))
    return dict(zip(configs, started, strict=True))


async def section_front(bench: Bench) -> dict:
    p = bench.profile
    present = extension_present()
    ext = extension_args(present)
    bench.log(f"5. through the front ({EXTENSION} {'enabled' if present else 'not in the package'})")
    remote = Fake(bench, "remote-front")
    servers, _ = await asyncio.gather(start_servers(bench, ext), remote.start())
    local, local_port = servers.pop("local")
    procs = [local, *(proc for proc, _ in servers.values())]
    running: list[Mixer] = []
    sec: dict = {"exec_n": p.exec_n, "extension": present, "tests": {}}
    try:
        targets = await stock_targets(bench, servers)
        lab, running, fronts = await lab_targets(bench, ext, local_port, local.pid, remote)
        procs += fronts
        sec["tests"]["exec_small"] = await bench.rounds(
            f"front {p.exec_n} x 1+1",
            targets + lab,
            p.kernel_rounds,
            lambda s, t, m: t_exec_small(s, t, m, p.exec_n),
        )
        stats = await remote.stats()
        sec["mixers"] = {m.label: bench.finish_mixer(m, "front", stats) for m in running}
    finally:
        for m in running:
            if m.proc is not None:
                m.finish()
        for proc in reversed(procs):
            bench.procs.stop(proc, timeout=15)
        remote.stop()
    return sec
