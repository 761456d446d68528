"""The benchmark's report: one table per section and the targets, as plain text.

``render(results, meta)`` turns what the scenarios returned into the text printed at
the end of a run (and kept as ``table.txt``), and the list of targets with verdicts.
"""

from __future__ import annotations

from bench.driver import med
from bench.render_front import anchor_targets, render_front, render_nginx, render_pollers
from bench.report import Report, Table, cell, errors_of, fmt, names_of, noise, ratio_of

WS_ROWS = (
    ("1 KiB round trip p50 (us)", "rtt", "p50_us", False),
    ("1 KiB round trip p99 (us)", "rtt", "p99_us", False),
    ("pipelined 1 KiB, 64 in flight (msg/s)", "pipelined", "msg_per_s", True),
    ("1 MiB binary, 4 in flight (MB/s)", "bulk", "mb_per_s", True),
    ("200 conns x 50 round trips, total (s)", "many", "total_s", False),
    ("  ... round trip p99 (ms)", "many", "p99_ms", False),
    ("  ... slowest connect (ms)", "many", "connect_max_ms", False),
    ("  ... accept-queue overflows (system-wide)", "many", "listen_overflows", False),
)
RELAY_CPU_ROWS = (
    ("1 KiB one at a time", "rtt"),
    ("1 KiB pipelined", "pipelined"),
    ("1 KiB, 200 conns", "many"),
    ("1 MiB", "bulk"),
)


def header(report: Report, results: dict, meta: dict) -> None:
    report.add(f"Notebook Kernels Mixer benchmark: {meta['profile']} run, {meta['date']}")
    report.add(f"machine: {meta['machine']}")
    report.add(f"load average at start: {meta.get('loadavg', '?')}")
    report.add(f"setup: {meta['setup']}")
    for label, template in meta["mixers"]:
        report.add(f"{label}: {template}")
    report.add(
        "cells: median over rounds (ratio to direct [range of per-round ratios]); "
        f"total {results.get('duration_s')} s"
    )
    for key, value in results.items():
        if key.endswith("_error"):
            report.add(f"\nSECTION {key[:-6]} FAILED: {value}")


def ws_table(tests: dict, names: list[str]) -> Table:
    t = Table("\n1. Kernel websocket relay, fast fake backends", ["figure", *names])
    for label, test, key, hb in WS_ROWS:
        t.add(label, *(cell(tests[test], n, key, hb, ratio=key != "listen_overflows") for n in names))
    t.add(
        "errors, all tests and rounds",
        *(str(sum(errors_of(test.get(n, ())) for test in tests.values())) for n in names),
    )
    for label, test in RELAY_CPU_ROWS:
        t.add(
            f"relay CPU per round trip, {label} (us)",
            *(fmt(med(tests[test][n], "mixer_us_per_msg")) for n in names),
        )
    t.add(
        "backend CPU per msg, pipelined (us)",
        *(fmt(med(tests["pipelined"][n], "backend_us_per_msg")) for n in names),
    )
    for test in ("rtt", "pipelined", "bulk", "many"):
        t.add(f"client CPU %, {test}", *(fmt(med(tests[test][n], "client_cpu_pct")) for n in names))
    t.add("other processes' CPU %, worst test", *(fmt(noise(tests, n)) for n in names))
    t.add(
        "mixer peak RSS, 200 conns (MB)",
        *(fmt(tests["many"].get("_peak_rss_mb", {}).get(n)) for n in names),
    )
    return t


def ws_targets(report: Report, tests: dict, n: str) -> None:
    r = ratio_of(tests["rtt"], n, "p50_us")
    report.target("websocket 1 KiB round trip p50", "<= 1.3x", n, r, r is not None and r <= 1.3)
    r = ratio_of(tests["pipelined"], n, "msg_per_s")
    report.target("pipelined 1 KiB msg/s", ">= 0.6x", n, r, r is not None and r >= 0.6)
    r = ratio_of(tests["bulk"], n, "mb_per_s")
    report.target("1 MiB binary MB/s", ">= 0.75x", n, r, r is not None and r >= 0.75)
    r = ratio_of(tests["many"], n, "total_s")
    errs = errors_of(tests["many"][n])
    ok = r is not None and r <= 1.6 and errs == 0
    report.target("200 x 50 concurrent, total time", "<= 1.6x, 0 errors", n, r, ok)
    v = med(tests["pipelined"][n], "mixer_us_per_msg")
    report.target("mixer CPU per small message (us, pipelined)", "<= 25 us", n, v, v is not None and v <= 25)
    v = tests["many"].get("_peak_rss_mb", {}).get(n)
    report.target("mixer peak RSS, 200 websockets (MB)", "<= 80 MB", n, v, v is not None and v <= 80)


def render_ws(report: Report, ws: dict) -> None:
    tests = ws["tests"]
    names = names_of(tests["rtt"])
    report.add(ws_table(tests, names).render())
    for note in ws.get("notes", ()):
        report.add(f"  ({note})")
    for n in names:
        if n != "direct" and not n.startswith("ref-"):
            ws_targets(report, tests, n)
    render_nginx(report, tests)
    anchor_targets(report, tests)


def render_kernel(report: Report, kernel: dict) -> None:
    tests = kernel["tests"]
    names = names_of(tests["exec_small"])
    exec_n = kernel.get("exec_n", "?")
    t = Table("\n2. Real kernels (jupyter_server + ipykernel as local backend)", ["figure", *names])
    small, big = tests["exec_small"], tests["exec_big"]
    t.add(f"{exec_n} x 1+1, total (s)", *(cell(small, n, "total_s") for n in names))
    t.add("  ... per execution p50 (ms)", *(cell(small, n, "p50_ms") for n in names))
    t.add("20 MB cell (s)", *(cell(big, n, "total_s") for n in names))
    t.add("  ... MB received", *(fmt(med(big[n], "printed_mb")) for n in names))
    t.add(f"mixer CPU, {exec_n} x 1+1 (s)", *(fmt(med(small[n], "mixer_cpu_s")) for n in names))
    t.add("mixer CPU, 20 MB cell (s)", *(fmt(med(big[n], "mixer_cpu_s")) for n in names))
    t.add("client CPU %, 20 MB cell", *(fmt(med(big[n], "client_cpu_pct")) for n in names))
    t.add("other processes' CPU %, worst test", *(fmt(noise(tests, n)) for n in names))
    report.add(t.render())
    for n in names:
        if n == "direct":
            continue
        figures = ((f"real kernel {exec_n} x 1+1", "exec_small"), ("real kernel 20 MB cell", "exec_big"))
        for figure, test in figures:
            r = ratio_of(tests[test], n, "total_s")
            ok = r is not None and r <= 1.05 and errors_of(tests[test][n]) == 0
            report.target(figure, "<= 1.05x", n, r, ok)


def rest_table(rest: dict) -> Table:
    t = Table(
        "\n3. REST listings (direct = the slower backend alone; p50 ms)",
        ["scenario", "request", "config", "p50 ms", "p90 ms", "cold ms", "mixer CPU/req us", "errors"],
    )
    for scen in ("both_fast", "remote_200ms", "local_100ms_remote_200ms"):
        if scen not in rest:
            continue
        s = rest[scen]
        for path, test in s["tests"].items():
            for n in names_of(test):
                cold = s["cold"].get(n, {}).get(path, {})
                t.add(
                    scen,
                    path.rsplit("/", 1)[1],
                    n,
                    cell(test, n, "p50_ms"),
                    fmt(med(test[n], "p90_ms")),
                    fmt(cold.get("ms")),
                    fmt(med(test[n], "mixer_us_per_msg")),
                    fmt(errors_of(test[n])),
                )
    return t


def rest_targets(report: Report, rest: dict, n: str) -> None:
    fast = rest["both_fast"]["tests"]
    r = ratio_of(fast["/api/kernelspecs"], n, "p50_ms")
    report.target("REST both fast, kernelspecs p50", "<= 2x", n, r, r is not None and r <= 2)
    r = ratio_of(fast["/api/kernels"], n, "p50_ms")
    report.target("REST both fast, kernels p50", "<= 3x", n, r, r is not None and r <= 3)
    report.target("REST both fast, kernels p50 (issue 12)", "<= 2.5x", n, r, r is not None and r <= 2.5)
    slow = rest["local_100ms_remote_200ms"]
    r = ratio_of(slow["tests"]["/api/kernels"], n, "p50_ms")
    goal = "<= 1.05x of slower"
    report.target("REST local+100 remote+200, kernels p50", goal, n, r, r is not None and r <= 1.05)
    cold = slow["cold"].get(n, {}).get("/api/kernels", {}).get("ms")
    direct = med(slow["tests"]["/api/kernels"]["direct"], "p50_ms")
    r = cold / direct if cold and direct else None
    report.target("REST local+100 remote+200, first kernels", goal, n, r, r is not None and r <= 1.05)
    v = med(slow["tests"]["/api/kernelspecs"][n], "p50_ms")
    figure = "REST local+100 remote+200, kernelspecs fresh cache (ms)"
    report.target(figure, "<= 10 ms", n, v, v is not None and v <= 10)


def render_rest(report: Report, rest: dict) -> None:
    report.add(rest_table(rest).render())
    for n in names_of(rest["both_fast"]["tests"]["/api/kernels"]):
        if n != "direct":
            rest_targets(report, rest, n)
    if rest.get("pollers"):
        render_pollers(report, rest["pollers"])
    if rest.get("blackhole"):
        render_blackhole(report, rest["blackhole"])


def blackhole_row(report: Report, t: Table, n: str, b: dict, phase: str) -> None:
    ph = b.get(phase, {})
    fs, fk = ph.get("first_kernelspecs", {}), ph.get("first_kernels", {})
    later = ph.get("later", {})
    listed = bool(fs.get("local_listed") and fk.get("local_listed"))
    t.add(
        n,
        "fresh mixer" if phase == "cold" else "warm mixer",
        fmt(fs.get("ms")),
        fmt(fk.get("ms")),
        str(listed),
        fmt(later.get("p50_ms")),
        fmt(later.get("max_ms")),
        str(later.get("all_ok")),
        fmt(b.get("recovery_s")) if phase == "cold" else "-",
    )
    first = max(fs.get("ms", 1e9), fk.get("ms", 1e9))
    goal = "<= 3000 ms, local listed"
    ok = first <= 3000 and listed
    report.target(f"blackholed remote ({phase}), first answers (ms)", goal, n, first, ok)
    v = later.get("max_ms")
    ok = v is not None and v <= 50 and bool(later.get("all_ok"))
    report.target(f"blackholed remote ({phase}), later answers max (ms)", "<= 50 ms", n, v, ok)


def render_blackhole(report: Report, bh: dict) -> None:
    t = Table(
        "\n3b. Remote blackholed (accepts TCP, never answers)",
        ["mixer", "phase", "first specs ms", "first kernels ms", "local listed", "later p50 ms",
         "later max ms", "later all ok", "back after s"],
    )
    for n, b in bh.items():
        for phase in ("cold", "warm"):
            blackhole_row(report, t, n, b, phase)
        v = b.get("recovery_s")
        goal = "within seconds (<= 10 s)"
        report.target("remote back after un-blackholing (s, specs)", goal, n, v, v is not None and v <= 10)
    report.add(t.render())
    report.add(
        "  (remote's new kernel listed after recovery, s: "
        + ", ".join(f"{n} {fmt(b.get('recovery_kernels_s'))}" for n, b in bh.items())
        + ")"
    )


def instances_table(instances: list[dict]) -> Table:
    t = Table(
        "\n4. Mixer processes (one per section/scenario)",
        ["mixer", "section", "CPU s", "peak RSS MB", "gcloud runs", "client reqs", "remote reqs",
         "runs/client req", "alive"],
    )
    for i in instances:
        reqs = i.get("client_requests") or 0
        t.add(
            i["mixer"],
            i["section"],
            fmt(i["cpu_s"]),
            fmt(i["peak_rss_mb"]),
            str(i["gcloud_runs"]),
            str(reqs),
            fmt(i.get("remote_requests")),
            fmt(i["gcloud_runs"] / reqs if reqs else None),
            str(i["alive_at_end"]),
        )
    return t


def render_instances(report: Report, instances: list[dict]) -> None:
    report.add(instances_table(instances).render())
    for label in {i["mixer"] for i in instances}:
        mine = [i for i in instances if i["mixer"] == label]
        worst = max(i["gcloud_runs"] for i in mine)
        reqs = sum(i.get("client_requests") or 0 for i in mine)
        figure = "credential command runs (max per mixer instance, token lifetime 1 h)"
        report.target(figure, "<= 1", label, worst, worst <= 1)
        runs = sum(i["gcloud_runs"] for i in mine) / reqs if reqs else None
        report.target(f"credential runs per request ({reqs} requests)", "~0", label, runs, None)
        peak = max(i["peak_rss_mb"] for i in mine)
        report.target("mixer peak RSS, any section incl. 20 MB cell (MB)", "(80 MB)", label, peak, None)
        dead = [i["section"] for i in mine if not i["alive_at_end"]]
        alive = f"{len(mine) - len(dead)}/{len(mine)}"
        report.target("mixer still running at end of each section", "all", label, alive, not dead)


def noise_warning(report: Report, results: dict) -> None:
    worst = [
        noise(results[sec]["tests"], n)
        for sec, test in (("ws", "rtt"), ("kernel", "exec_small"), ("front", "exec_small"))
        if sec in results
        for n in names_of(results[sec]["tests"].get(test, {}))
    ]
    worst = [w for w in worst if w is not None]
    if worst and max(worst) > 15:
        report.add(
            f"\nWARNING: other processes used up to {max(worst):.0f}% of a CPU during the "
            "measurements; the ratios are skewed. Run again on a quiet machine."
        )


def render(results: dict, meta: dict) -> tuple[str, list[dict]]:
    """The report's text and its targets (figure, target, config, value, ok)."""
    report = Report()
    header(report, results, meta)
    if results.get("ws"):
        render_ws(report, results["ws"])
    if results.get("kernel"):
        render_kernel(report, results["kernel"])
    if results.get("rest"):
        render_rest(report, results["rest"])
    if results.get("front"):
        render_front(report, results["front"])
    if results.get("switch"):
        from bench.switch import render_switch

        render_switch(report, results["switch"])
    if results.get("scale"):
        from bench.render_scale import render_scale

        render_scale(report, results["scale"])
    if meta.get("instances"):
        render_instances(report, meta["instances"])
    noise_warning(report, results)
    if report.targets:
        issues = ", ".join(["3", "12", *(["18"] if results.get("switch") else []),
                            *(["20"] if results.get("scale") or results.get("ws") else [])])
        issues = "issues " + issues.rsplit(", ", 1)[0] + " and " + issues.rsplit(", ", 1)[1]
        report.add(report.targets_table(f"\nTargets ({issues})"))
    return "\n".join(report.lines), report.targets
