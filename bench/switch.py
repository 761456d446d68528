"""Benchmark of a switch through the mixer, with and without ``--carry-variables``
(issue 18, acceptance 4), on loopback.

One local jupyter_server (token) and one bearer-only "remote" jupyter_server (its token
printed by the tests' stand-in ``gcloud``), as in the e2e tests
(``tests/e2e/support/topology.py``), and two mixers in front of both: ``today`` (no
flag: a switch starts an empty kernel) and ``carry`` (``--carry-variables``). Each
configuration has one notebook session, created on ``local-python3``; a round moves
it to ``remote-python3`` and back (``PATCH /api/sessions/{id}``), each switch timed
from the request to its answer. Configurations, interleaved (A B C D, D C B A, …):

* ``today, empty`` and ``carry, empty``: nothing defined (what the carry adds to a
  switch; target ≤ +300 ms);
* ``carry, 100 MB bytes``: 10 values of 10 MB (``bytes``) values (target ≤ 3 s over the empty
  carrying switch);
* ``carry, 100 MB numpy``: 10 float64 arrays of 10 MB, when the kernels can import
  numpy (``--kernel-pythonpath``).

During every switch the mixer's peak RSS (VmHWM, reset before through
``/proc/PID/clear_refs``) is compared with its RSS just before (target: under +64 MB
during the 100 MB carries). Round 0 warms up and is not counted. The figures are
medians over rounds; brackets hold the range of the per-round differences::

    .venv/bin/python -m bench.switch                 # 5 rounds, about 2 to 3 minutes
    .venv/bin/python -m bench.switch --rounds 6 --kernel-pythonpath /tmp/np --json out.json

(numpy need not be in the environment: ``pip install --target DIR numpy`` and
``--kernel-pythonpath DIR`` give it to the kernels only.) Targets are printed with
ok/miss; this is a benchmark, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from tests.e2e.support import topology
from tests.e2e.support.api import ApiClient
from tests.e2e.support.fake_gcloud import FakeGcloud
from tests.e2e.support.kernel_client import KernelConnection
from tests.e2e.support.topology import SUPPORT_DIR, JupyterServer, Mixer

from bench.procs import cpu_seconds, reset_peak, status_kb, system_cpu, tree_cpu
from notebook_kernels_mixer.carry import OK

LOCAL, REMOTE = "local-python3", "remote-python3"
TARGET_EMPTY_S = 0.300
TARGET_100MB_S = 3.0
TARGET_RSS_MB = 64.0


@dataclass
class Config:
    name: str
    mixer: str  # "today" or "carry"
    cell: str  # what the session's kernel defines first
    mb: int = 0  # what it should carry
    session: str = ""
    kernel: str = ""
    rounds: list[list[dict[str, Any]]] = field(default_factory=list)  # per round: there, back


def cells(mb: int) -> dict[str, str]:
    n = 10
    each = mb * 1024 * 1024 // n
    return {
        "bytes": "import os\n" + "\n".join(f"b{i} = os.urandom({each})" for i in range(n)),
        "numpy": "import numpy as np\n_rng = np.random.default_rng(0)\n"
        + "\n".join(f"a{i} = _rng.random({each // 8})" for i in range(n)) + "\ndel _rng",
    }


class Run:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.token = uuid.uuid4().hex
        self.xsrf = uuid.uuid4().hex
        self.gcloud = FakeGcloud(workdir / "gcloud", token_file=workdir / "remote-bearer-token",
                                 expiry_seconds=3600)
        extra = args.kernel_pythonpath
        self.local = topology.jupyter_server(
            "local", workdir, where="local", token=self.token,
            extra_env={"PYTHONPATH": extra} if extra else None)
        self.remote = topology.jupyter_server(
            "remote", workdir, where="remote", bearer_file=self.gcloud.token_file,
            extra_env={"PYTHONPATH": os.pathsep.join([str(SUPPORT_DIR), extra])} if extra else None)
        common = {"local": self.local, "remote": self.remote, "token": self.token, "gcloud": self.gcloud}
        # every mixer gets --state-file in this run's folder (topology's default)
        self.mixers: dict[str, Mixer] = {
            "today": topology.mixer(workdir, name="mixer-today", **common),
            "carry": topology.mixer(workdir, name="mixer-carry", extra_args=["--carry-variables"],
                                    **common),
        }
        self.started: list[JupyterServer | Mixer] = []
        self.http: aiohttp.ClientSession | None = None
        self.apis: dict[str, ApiClient] = {}

    # -- processes ---------------------------------------------------------------------------

    def start(self) -> None:
        for server in (self.local, self.remote):
            self.started.append(server)
            server.start(wait=False)
        for server in (self.local, self.remote):
            server.wait_ready()
        for m in self.mixers.values():
            self.started.append(m)
            m.process.start(wait=False)
        for m in self.mixers.values():
            m.process.wait_ready()

    def stop(self) -> None:
        """Every process this run started, newest first, each by its PID."""
        while self.started:
            with contextlib.suppress(Exception):
                self.started.pop().stop()

    def pid(self, mixer: str) -> int:
        pid = self.mixers[mixer].process.pid
        assert pid is not None
        return pid

    def cpu_of_ours(self) -> float:
        """CPU seconds of this process and every server's tree (kernels included, the
        reaped ones through their parent's children's time)."""
        total = time.process_time()
        for p in self.started:
            if p.process.pid is not None:
                total += tree_cpu(p.process.pid)
        return total

    # -- the client --------------------------------------------------------------------------

    async def cell(self, api: ApiClient, kernel: str, code: str) -> str:
        assert self.http is not None
        conn = await KernelConnection.open(self.http, api.ws_url(f"/api/kernels/{kernel}/channels"),
                                           headers=api.auth(), timeout=120)
        async with conn:
            result = await conn.execute(code, timeout=300)
        if result.status != "ok":
            raise RuntimeError(f"cell failed on {api.name}: {result}")
        return result.stdout

    async def create(self, cfg: Config) -> None:
        api = self.apis[cfg.mixer]
        model = await api.ok_json("POST", "/api/sessions", {
            "path": f"bench-{cfg.name.replace(' ', '-').replace(',', '')}.ipynb",
            "type": "notebook", "kernel": {"name": LOCAL}}, expect=(201,))
        cfg.session, cfg.kernel = model["id"], model["kernel"]["id"]
        await self.cell(api, cfg.kernel, cfg.cell or "pass")

    async def switch(self, cfg: Config, spec: str) -> dict[str, Any]:
        api, pid = self.apis[cfg.mixer], self.pid(cfg.mixer)
        before = (await api.ok_json("GET", "/mixer/api/status"))["carries"]["carries"]
        rss = status_kb(pid, "VmRSS")
        reset = reset_peak(pid)
        started = time.perf_counter()
        resp = await api.patch(f"/api/sessions/{cfg.session}", {"kernel": {"name": spec}}, timeout=300)
        seconds = time.perf_counter() - started
        hwm = status_kb(pid, "VmHWM")
        if resp.status != 200 or resp.json()["kernel"]["name"] != spec:
            raise RuntimeError(f"switch failed: {resp.describe()}")
        cfg.kernel = resp.json()["kernel"]["id"]
        # usable: until the new kernel has run a first cell (today's answer comes before
        # the kernel is ready; a carry has waited for it already)
        await self.cell(api, cfg.kernel, "pass")
        usable = time.perf_counter() - started
        sample: dict[str, Any] = {
            "seconds": seconds, "usable_s": usable, "rss_before_mb": rss / 1024, "peak_reset": reset,
            "peak_growth_mb": (hwm - rss) / 1024,  # without the reset: an upper bound
        }  # fmt: skip
        status = await api.ok_json("GET", "/mixer/api/status")
        if status["carries"]["carries"] > before:
            report = next(r for r in status["carries"]["recent"] if r["session"] == cfg.session)
            sample["carry"] = {k: report.get(k) for k in ("outcome", "bytes", "seconds", "reason")}
        return sample


# -- figures -----------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def per_round(cfg: Config, key: str = "seconds") -> list[float]:
    """The mean of a round's two switches (there and back), per counted round."""
    return [statistics.fmean(s[key] for s in r) for r in cfg.rounds[1:]]


def summarize(configs: list[Config]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cfg in configs:
        counted = cfg.rounds[1:]
        there = [r[0]["seconds"] for r in counted]
        back = [r[1]["seconds"] for r in counted]
        samples = [s for r in counted for s in r]
        carries = [s["carry"] for s in samples if "carry" in s]
        out[cfg.name] = {
            "there_s": _median(there), "back_s": _median(back),
            "all_s": _median(there + back), "min_s": min(there + back), "max_s": max(there + back),
            "usable_s": _median([s["usable_s"] for s in samples]),
            "carry_s": _median([c["seconds"] for c in carries]) if carries else None,
            "carried_mb": _median([c["bytes"] / 1e6 for c in carries]) if carries else None,
            "outcomes": sorted({c["outcome"] for c in carries}),
            "not_ok": [c for c in carries if c["outcome"] != OK],
            "peak_growth_mb": max(s["peak_growth_mb"] for s in samples),
            "peak_reset": all(s["peak_reset"] for s in samples),
            "rss_before_mb": [min(s["rss_before_mb"] for s in samples),
                              max(s["rss_before_mb"] for s in samples)],
        }  # fmt: skip
    return out


def _delta(a: Config, b: Config, key: str = "seconds") -> tuple[float, float, float, float]:
    """median(a) - median(b) over all counted switches, their ratio, and the range of
    the per-round differences."""
    diffs = [x - y for x, y in zip(per_round(a, key), per_round(b, key), strict=True)]
    ma = _median([s[key] for r in a.rounds[1:] for s in r])
    mb = _median([s[key] for r in b.rounds[1:] for s in r])
    return ma - mb, ma / mb, min(diffs), max(diffs)


def render(configs: list[Config], summary: dict[str, Any], meta: dict[str, Any]) -> tuple[str, list]:
    lines = [
        f"switch through the mixer: PATCH /api/sessions/{{id}} → answer, {meta['rounds']} rounds "
        "(+1 warm-up), medians",
        f"{'configuration':<22} {'→remote s':>9} {'→local s':>9} {'all s':>7} {'min–max s':>12} "
        f"{'usable s':>9} {'carry s':>8} {'MB':>5} {'peak RSS +MB':>12}  outcome",
    ]
    for cfg in configs:
        s = summary[cfg.name]
        carry = f"{s['carry_s']:8.3f}" if s["carry_s"] is not None else f"{'-':>8}"
        mb = f"{s['carried_mb']:5.0f}" if s["carried_mb"] is not None else f"{'-':>5}"
        lines.append(
            f"{cfg.name:<22} {s['there_s']:9.3f} {s['back_s']:9.3f} {s['all_s']:7.3f} "
            f"{s['min_s']:5.2f}–{s['max_s']:<6.2f} {s['usable_s']:9.3f} {carry} {mb} "
            f"{s['peak_growth_mb']:12.1f}  "
            f"{','.join(s['outcomes']) or 'no carry'}")
        if s["not_ok"]:
            lines.append(f"  WARNING: {len(s['not_ok'])} carries did not end ok: {s['not_ok'][:2]}")
    lines += [
        "all s: PATCH request to its answer, both directions; usable s: until the new kernel has",
        "  run a first cell (today's answer comes before its kernel is ready); carry s: the carry's",
        "  own time in the mixer's report (/mixer/api/status); peak RSS +MB: the mixer's VmHWM",
        "  during the switch over its VmRSS just before",
    ]
    by = {c.name: c for c in configs}
    targets: list[dict[str, Any]] = []
    lines += ["", "Targets"]
    d, ratio, lo, hi = _delta(by["carry, empty"], by["today, empty"])
    targets.append({"what": "empty namespace: carrying switch − today's switch", "value_s": d,
                    "ratio": ratio, "target": f"≤ +{TARGET_EMPTY_S:.3f} s", "ok": d <= TARGET_EMPTY_S})
    lines.append(f"  empty namespace, carrying switch vs today's: {d:+.3f} s (×{ratio:.2f}; "
                 f"per round {lo:+.3f}…{hi:+.3f})  target ≤ +{TARGET_EMPTY_S:.3f} s  "
                 f"{'ok' if d <= TARGET_EMPTY_S else 'MISS'}")
    d, ratio, lo, hi = _delta(by["carry, empty"], by["today, empty"], "usable_s")
    targets.append({"what": "empty namespace, until usable: carrying − today's", "value_s": d,
                    "ratio": ratio, "target": "info"})
    lines.append(f"  (info) the same until the new kernel has run a cell: {d:+.3f} s (×{ratio:.2f}; "
                 f"per round {lo:+.3f}…{hi:+.3f})")
    for cfg in configs:
        if cfg.mb:
            d, ratio, lo, hi = _delta(cfg, by["carry, empty"])
            targets.append({"what": f"{cfg.name}: switch − empty carrying switch", "value_s": d,
                            "target": f"≤ +{TARGET_100MB_S:.0f} s", "ok": d <= TARGET_100MB_S})
            lines.append(f"  {cfg.name}, over the empty carrying switch: {d:+.3f} s (per round "
                         f"{lo:+.3f}…{hi:+.3f})  target ≤ +{TARGET_100MB_S:.0f} s  "
                         f"{'ok' if d <= TARGET_100MB_S else 'MISS'}")
    for cfg in configs:
        if cfg.mb:
            s = summary[cfg.name]
            g = s["peak_growth_mb"]
            how = "" if s["peak_reset"] else " (peak not resettable: an upper bound)"
            targets.append({"what": f"{cfg.name}: mixer peak RSS growth", "value_mb": g,
                            "target": f"< +{TARGET_RSS_MB:.0f} MB", "ok": g < TARGET_RSS_MB})
            lines.append(f"  {cfg.name}, carrying mixer's peak RSS over idle: {g:+.1f} MB (idle "
                         f"{s['rss_before_mb'][0]:.0f}–{s['rss_before_mb'][1]:.0f} MB){how}  "
                         f"target < +{TARGET_RSS_MB:.0f} MB  {'ok' if g < TARGET_RSS_MB else 'MISS'}")
    lines += [
        "",
        f"machine: {meta['machine']}",
        f"load average before/after: {meta['loadavg_before']} / {meta['loadavg_after']}; "
        f"other processes' CPU during the rounds: {meta['others_cpu_pct']:.0f}% of one CPU "
        f"(of {os.cpu_count()}); duration {meta['duration_s']:.0f} s",
    ]
    if meta["others_cpu_pct"] > 25:
        lines.append("WARNING: other processes used the CPU during the rounds: the figures are skewed")
    return "\n".join(lines), targets


# -- the run -----------------------------------------------------------------------------------


async def measure(run: Run, args: argparse.Namespace) -> tuple[list[Config], dict[str, Any]]:
    data = cells(args.mb)
    configs = [
        Config("today, empty", "today", ""),
        Config("carry, empty", "carry", ""),
        Config(f"carry, {args.mb} MB bytes", "carry", data["bytes"], mb=args.mb),
    ]
    async with aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=600)) as http:
        run.http = http
        run.apis = {n: ApiClient(http, m.url, auth=m.auth, xsrf=run.xsrf, name=f"mixer {n}")
                    for n, m in run.mixers.items()}
        for cfg in configs:
            await run.create(cfg)
        has_numpy = (await run.cell(run.apis["carry"], configs[1].kernel,
                                    "import importlib.util as u; print(u.find_spec('numpy') is not None)"))
        if has_numpy.strip() == "True":
            numpy = Config(f"carry, {args.mb} MB numpy", "carry", data["numpy"], mb=args.mb)
            await run.create(numpy)
            configs.append(numpy)
        else:
            print("(numpy is not importable in the kernels: no numpy row; see --kernel-pythonpath)",
                  file=sys.stderr)
        busy0, cpu0, t0 = system_cpu()[0], run.cpu_of_ours(), time.monotonic()
        for r in range(args.rounds + 1):
            order = configs if r % 2 == 0 else configs[::-1]
            for cfg in order:
                cfg.rounds.append([await run.switch(cfg, REMOTE), await run.switch(cfg, LOCAL)])
            print(f"round {r}{' (warm-up)' if r == 0 else ''}: " + ", ".join(
                f"{c.name} {statistics.fmean(s['seconds'] for s in c.rounds[-1]):.2f} s" for c in configs),
                file=sys.stderr, flush=True)
        wall = time.monotonic() - t0
        others = max(0.0, (system_cpu()[0] - busy0) - (run.cpu_of_ours() - cpu0))
        for cfg in configs:
            with contextlib.suppress(Exception):
                await run.apis[cfg.mixer].delete(f"/api/sessions/{cfg.session}")
    return configs, {"others_cpu_pct": 100 * others / wall, "rounds_s": wall}


async def run_switch(rounds: int, mb: int, kernel_pythonpath: str | None, workdir: Path) -> dict[str, Any]:
    """Start the servers and mixers in ``workdir``, measure, stop every process; the
    figures, the report's text and its targets."""
    from bench.run import machine  # here: bench.run imports this module for its sections

    args = argparse.Namespace(rounds=rounds, mb=mb, kernel_pythonpath=kernel_pythonpath)
    started = time.monotonic()
    meta: dict[str, Any] = {"rounds": rounds, "mb": mb, "machine": machine(),
                            "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    run = Run(args, workdir)
    try:
        await asyncio.to_thread(run.start)
        configs, figures = await measure(run, args)
    except BaseException:
        for p in run.started:
            with contextlib.suppress(Exception):
                print(p.process.tail_text(30), file=sys.stderr)
        raise
    finally:
        mixer_cpu = {n: cpu_seconds(m.process.pid) for n, m in run.mixers.items() if m.process.pid}
        await asyncio.to_thread(run.stop)
    meta.update(figures, loadavg_after=" ".join(f"{x:.2f}" for x in os.getloadavg()),
                duration_s=time.monotonic() - started, mixer_cpu_s=mixer_cpu)
    summary = summarize(configs)
    text, targets = render(configs, summary, meta)
    return {"meta": meta, "summary": summary, "targets": targets, "text": text,
            "rounds": {c.name: c.rounds for c in configs}}


# -- as a section of bench/run.py (``--sections switch``) ---------------------------------------


async def section_switch(bench: Any) -> dict[str, Any]:
    """``bench/run.py --sections switch``: 2 counted rounds with ``--quick``, else 4."""
    bench.log("switch through the mixer, with and without --carry-variables (issue 18)")
    rounds = 2 if bench.profile.name == "quick" else 4
    workdir = Path(bench.tmp) / "switch"
    workdir.mkdir(parents=True, exist_ok=True)
    return await run_switch(rounds, 100, getattr(bench.args, "kernel_pythonpath", None), workdir)


def render_switch(report: Any, section: dict[str, Any]) -> None:
    """The section's text in ``bench/run.py``'s report, its targets in the Targets table."""
    report.add("\n" + section["text"])
    for t in section["targets"]:
        value = t.get("value_s", t.get("value_mb"))
        ok = t.get("ok") if t["target"] != "info" else None
        report.target(t["what"], t["target"], "switch (issue 18)", value, ok)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="counted rounds (a warm-up round comes first)")
    parser.add_argument("--mb", type=int, default=100, help="size of the large namespaces")
    parser.add_argument("--kernel-pythonpath", default=None,
                        help="PYTHONPATH of the kernels (e.g. a pip --target folder with numpy)")
    parser.add_argument("--json", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-switch-") as tmp:
        result = asyncio.run(run_switch(args.rounds, args.mb, args.kernel_pythonpath, Path(tmp)))
    print(result["text"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
