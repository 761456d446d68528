"""The report's issue-12 and issue-20 parts: the mixer's relay against nginx and the
Go original, listings under many pollers, and the ``1+1`` round trip through a front
Jupyter server."""

from __future__ import annotations

from bench.driver import med
from bench.report import Report, Table, cell, errors_of, fmt, names_of, noise, ratio_of

NGINX = "ref-nginx"
# (label, test, key, target as (sign, bound)): latency ratios must stay under the
# bound, throughput ratios over its inverse (the stretch goal: within 1.15x of nginx).
NGINX_ROWS = (
    ("1 KiB round trip p50", "rtt", "p50_us", "<="),
    ("1 KiB round trip p99", "rtt", "p99_us", None),
    ("pipelined 1 KiB msg/s", "pipelined", "msg_per_s", ">="),
    ("1 MiB binary MB/s", "bulk", "mb_per_s", ">="),
    ("200 conns x 50, total time", "many", "total_s", "<="),
)
STRETCH = 1.15
GO = "ref-go"
# Issue 20: (label, test, key, sign, bound against nginx); against the Go original the
# bound is 1 (at or ahead of it) for every figure. The CPU row compares one round trip
# at a time, the "relay CPU per round-trip message".
ANCHOR_ROWS = (
    ("1 KiB round trip p50", "rtt", "p50_us", "<=", 1.10),
    ("pipelined 1 KiB msg/s", "pipelined", "msg_per_s", ">=", 1.0),
    ("1 MiB binary MB/s", "bulk", "mb_per_s", ">=", 1.0),
    ("200 conns x 50, total time", "many", "total_s", "<=", 1.10),
    ("relay CPU per round trip, one at a time", "rtt", "mixer_us_per_msg", "<=", 1.3),
)


def render_nginx(report: Report, tests: dict) -> None:
    """Every relay's figures as ratios to nginx's from the same rounds."""
    names = [n for n in names_of(tests["rtt"]) if n not in ("direct", NGINX)]
    if NGINX not in tests["rtt"] or not names:
        return
    t = Table("\n1b. Relays against nginx (median (ratio to nginx [per-round range]))", ["figure", *names])
    for label, test, key, _ in NGINX_ROWS:
        t.add(label, *(cell(tests[test], n, key, base=NGINX) for n in names))
    t.add(
        "relay CPU per round trip, pipelined (us)",
        *(cell(tests["pipelined"], n, "mixer_us_per_msg", base=NGINX) for n in names),
    )
    report.add(t.render())
    report.add(f"  (nginx alone: relay CPU per round trip, pipelined "
               f"{fmt(med(tests['pipelined'][NGINX], 'mixer_us_per_msg'))} us)")
    for n in names:
        if n.startswith("ref-"):
            continue
        for label, test, key, sign in NGINX_ROWS:
            if sign is None:
                continue
            r = ratio_of(tests[test], n, key, base=NGINX)
            goal = f"<= {STRETCH}x" if sign == "<=" else f">= {1 / STRETCH:.2f}x"
            ok = r is not None and (r <= STRETCH if sign == "<=" else r >= 1 / STRETCH)
            report.target(f"(stretch) {label} vs nginx", goal, n, r, ok)


def anchor_targets(report: Report, tests: dict) -> None:
    """Issue 20's targets: every websocket figure at or ahead of the Go original's, and
    within its bounds of nginx's, as ratios from the same rounds."""
    names = [n for n in names_of(tests["rtt"]) if n != "direct" and not n.startswith("ref-")]
    for anchor, name in ((GO, "the Go original"), (NGINX, "nginx")):
        if anchor not in tests["rtt"]:
            continue
        for n in names:
            for label, test, key, sign, bound in ANCHOR_ROWS:
                limit = 1.0 if anchor == GO else bound
                r = ratio_of(tests[test], n, key, base=anchor)
                ok = r is not None and (r <= limit if sign == "<=" else r >= limit)
                report.target(f"(issue 20) {label} vs {name}", f"{sign} {limit:.2f}x", n, r, ok)


def render_pollers(report: Report, pollers: dict) -> None:
    tests = pollers.get("tests", {})
    if not tests:
        return
    t = Table(
        f"\n3c. GET /api/kernels polled through the mixer, {pollers['backends']} fast backends, "
        f"{pollers['total']} listings a round",
        ["mixer", "clients at once", "p50 ms", "p90 ms", "mixer CPU/listing us", "backend reqs/listing",
         "errors"],
    )
    for label, test in tests.items():
        for n in names_of(test):
            t.add(
                label,
                n,
                fmt(med(test[n], "p50_ms")),
                fmt(med(test[n], "p90_ms")),
                cell(test, n, "mixer_us_per_msg", base="1 poller"),
                fmt(med(test[n], "backend_requests_per_listing")),
                fmt(errors_of(test[n])),
            )
        r = ratio_of(test, "10 pollers", "mixer_us_per_msg", base="1 poller")
        figure = f"10 pollers x {pollers['backends']} backends: mixer CPU per listing vs 1 poller"
        report.target(figure, "<= 1.1x (flat)", label, r, r is not None and r <= 1.1)
    report.add(t.render())


def render_front(report: Report, front: dict) -> None:
    tests = front["tests"]["exec_small"]
    names = names_of(tests)
    exec_n = front.get("exec_n", "?")
    has_nodelay = "stock+nodelay" in tests
    t = Table(
        f"\n5. Through the front: {exec_n} x 1+1 over the kernel websocket a browser uses"
        f" (ratio to stock{'; [nodelay] = ratio to stock+nodelay' if has_nodelay else ''})",
        ["figure", *names],
    )
    t.add("per execution p50 (ms)", *(cell(tests, n, "p50_ms", base="stock") for n in names))
    if has_nodelay:
        t.add("  ... ratio to stock+nodelay", *(
            cell(tests, n, "p50_ms", base="stock+nodelay") if n != "stock" else "-" for n in names
        ))
    t.add("per execution p99 (ms)", *(cell(tests, n, "p99_ms", base="stock") for n in names))
    t.add(f"{exec_n} executions, total (s)", *(cell(tests, n, "total_s", base="stock") for n in names))
    t.add("kernel's server CPU, incl. the kernel (s)", *(fmt(med(tests[n], "backend_cpu_s")) for n in names))
    t.add("front CPU (s)", *(fmt(med(tests[n], "front_cpu_s")) for n in names))
    t.add("mixer CPU (s)", *(fmt(med(tests[n], "mixer_cpu_s")) for n in names))
    t.add("other processes' CPU %, worst test", *(fmt(noise({"x": tests}, n)) for n in names))
    report.add(t.render())
    if not front.get("extension"):
        report.add("  (notebook_kernels_mixer.jupyter is not in this package yet: no stock+nodelay,"
                   " and no TCP_NODELAY on the lab topology's servers)")
    for n in names:
        if n.startswith("stock"):
            continue
        r = ratio_of(tests, n, "p50_ms", base="stock")
        report.target("front 1+1 p50 vs stock jupyter_server", "<= 0.5x", n, r, r is not None and r <= 0.5)
        figure = "front 1+1 p50 vs stock with TCP_NODELAY"
        if not has_nodelay:
            report.target(figure, "<= 1.1x", n, "n/a", None)
            continue
        r = ratio_of(tests, n, "p50_ms", base="stock+nodelay")
        report.target(figure, "<= 1.1x", n, r, r is not None and r <= 1.1)
