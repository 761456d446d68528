"""The scale section's report (``bench/scale.py`` measures): its tables, the lines
fitted to each series (what grows linearly), its targets and ``scale.png``."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.report import Report, Table, fmt


def fit(points: list[tuple[float, float]]) -> tuple[float, float, float] | None:
    """Least-squares line through (x, y): (slope, intercept, R²), or None."""
    if len({x for x, _ in points}) < 2:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in points)
    return slope, intercept, (1 - ss_res / ss_tot) if ss_tot else 1.0


def plot(sec: dict, path: Path) -> str:
    """scale.png: listing p50 against kernels per backend (a line per backend count),
    mixer RSS against open websockets; what was written, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot left out: matplotlib is not installed (pip install -e '.[bench]')"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = [r for r in sec.get("listings", []) if "p50_ms" in r]
    for b in sorted({r["backends"] for r in rows}):
        pts = sorted((r["kernels"], r["p50_ms"]) for r in rows if r["backends"] == b)
        if pts:
            left.plot(*zip(*pts, strict=True), marker="o", label=f"{b} backend{'s' * (b > 1)}")
    direct = sorted({(r["kernels"], r["direct_p50_ms"]) for r in sec.get("listings", [])})
    if direct:
        left.plot(*zip(*direct, strict=True), linestyle="--", color="grey", label="1 backend direct")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="kernels per backend",
        ylabel="GET /api/kernels p50 (ms)",
        title="Listing latency, --listing-window 0",
    )
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    pts = ws_points(sec)
    if pts:
        right.plot(*zip(*pts, strict=True), marker="o")
    right.set(xlabel="open kernel websockets", ylabel="mixer RSS (MB)", title="Mixer RSS against websockets")
    right.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"


def pooled_fit(groups: dict[int, list[tuple[float, float]]]) -> tuple[float, float] | None:
    """One slope for several series that may each start elsewhere (an intercept per
    group: a listing over more backends costs more per listing, not per kernel):
    (slope, R² within the groups), or None."""
    num = den = ss_tot = 0.0
    centred = []
    for pts in groups.values():
        if len(pts) < 2:
            continue
        mx, my = statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts)
        centred += [(x - mx, y - my) for x, y in pts]
    for dx, dy in centred:
        num += dx * dy
        den += dx * dx
        ss_tot += dy * dy
    if not den:
        return None
    slope = num / den
    ss_res = sum((dy - slope * dx) ** 2 for dx, dy in centred)
    return slope, (1 - ss_res / ss_tot) if ss_tot else 1.0


def listing_groups(sec: dict, key: str) -> dict[int, list[tuple[float, float]]]:
    """Per backend count: (kernels listed, ``key`` in us) of each measured cell."""
    groups: dict[int, list[tuple[float, float]]] = {}
    for r in sec.get("listings", []):
        if key in r:
            groups.setdefault(r["backends"], []).append((r["total"], r[key] * 1e3))
    return groups


def ws_points(sec: dict) -> list[tuple[float, float]]:
    ws = sec.get("websockets", {})
    pts = [(0.0, ws["base_rss_mb"])] if "base_rss_mb" in ws else []
    return pts + [(r["open"], r["rss_mb"]) for r in ws.get("rows", [])]


def linear_lines(sec: dict) -> list[str]:
    """What grows linearly: the slope of each series, with how well a line fits."""
    out = []
    cpu = listing_groups(sec, "cpu_ms")
    f = pooled_fit(cpu)
    if f:
        out.append(
            f"  mixer CPU per listing grows linearly with the kernels listed: {f[0]:.2f} us per kernel "
            f"(R^2 {f[1]:.3f}; one slope, a constant per backend count)"
        )
    for b, pts in sorted(cpu.items()):
        g = fit(pts)
        if g:
            out.append(
                f"    {b:>2} backend{'s' if b > 1 else ' '}: {g[0]:.2f} us per kernel + {g[1]:.0f} us per "
                f"listing (R^2 {g[2]:.3f})"
            )
    f = pooled_fit(listing_groups(sec, "p50_ms"))
    if f:
        out.append(f"  listing p50 grows linearly too: {f[0]:.2f} us per kernel listed (R^2 {f[1]:.3f})")
    f = pooled_fit({0: ws_points(sec)})
    if f:
        out.append(
            f"  mixer RSS grows linearly with open websockets: {1024 * f[0]:.1f} KiB per websocket "
            f"(R^2 {f[1]:.3f})"
        )
    return out


def render_scale(report: Report, sec: dict) -> None:
    t = Table(
        "\nS1. GET /api/kernels through the mixer, --listing-window 0, sequential "
        "(direct = one backend alone)",
        [
            "kernels/backend",
            "backends",
            "kernels listed",
            "listings",
            "p50 ms",
            "p90 ms",
            "mixer CPU ms/listing",
            "mixer CPU us/kernel",
            "mixer RSS MB",
            "direct p50 ms",
            "errors",
            "other CPU %",
        ],
    )
    for r in sec.get("listings", []):
        if "skipped" in r:
            t.add(f"{r['kernels']:,}", str(r["backends"]), f"{r['total']:,}", r["skipped"], *[""] * 8)
            continue
        t.add(
            f"{r['kernels']:,}",
            str(r["backends"]),
            f"{r['total']:,}",
            str(r["listings"]),
            fmt(r["p50_ms"]),
            fmt(r["p90_ms"]),
            fmt(r["cpu_ms"]),
            fmt(r["us_per_kernel"]),
            fmt(r["rss_mb"]),
            fmt(r["direct_p50_ms"]),
            str(r["errors"]),
            fmt(r["other_cpu_pct"]),
        )
    report.add(t.render())
    ws = sec.get("websockets", {})
    t = Table(
        f"\nS2. Kernel websockets open at once through one mixer (fake echo backend; mixer RSS before any: "
        f"{fmt(ws.get('base_rss_mb'))} MB)",
        [
            "websockets",
            "open",
            "open errors",
            "open time s",
            "mixer RSS MB",
            "RSS per websocket KiB",
            "round trip p50 us",
            "round trip p99 us",
            "round trip errors",
        ],
    )
    for r in ws.get("rows", []):
        t.add(
            f"{r['websockets']:,}",
            str(r["open"]),
            str(r["open_errors"]),
            fmt(r["open_s"]),
            fmt(r["rss_mb"]),
            fmt(r["kib_per_ws"]),
            fmt(r["p50_us"]),
            fmt(r["p99_us"]),
            str(r["rt_errors"]),
        )
    report.add(t.render())
    if ws.get("skipped"):
        report.add(
            f"  skipped: {', '.join(map(str, ws['skipped']))} websockets (RLIMIT_NOFILE {ws['nofile'][0]}, "
            f"hard {ws['nofile'][1]}: a mixer needs 2 descriptors per websocket)"
        )
    for r in ws.get("rows", []):
        for sample in r.get("error_samples", []):
            report.add(f"  error at {r['websockets']}: {sample}")
    t = Table(
        "\nS3. Mixer start-up with a state file (2 backends holding the kernels)",
        [
            "state file",
            "answers after s",
            "RSS then MB",
            "first listing ms",
            "kernels listed",
            "RSS after it MB",
        ],
    )
    for r in sec.get("state", []):
        t.add(
            r["state"],
            fmt(r["startup_s"]),
            fmt(r["rss_mb"]),
            fmt(r["first_listing_ms"]),
            f"{r['listed']:,}",
            fmt(r["rss_after_listing_mb"]),
        )
    report.add(t.render())
    report.add("\nWhat grows linearly (least-squares line over the cells above):")
    for line in linear_lines(sec):
        report.add(line)
    report.add(f"  ({sec.get('plot', 'no plot')}; section took {sec.get('duration_s')} s)")
    scale_targets(report, sec)


def scale_targets(report: Report, sec: dict) -> None:
    def check(figure: str, goal: str, v: float | None, ok: bool) -> None:
        report.target(figure, goal, "scale", v, ok if v is not None else None)

    f = pooled_fit(listing_groups(sec, "cpu_ms"))
    v = f[0] if f else None
    check("uncached listing, mixer CPU per kernel (us)", "<= 2 us", v, v is not None and v <= 2)
    rows = [r for r in sec.get("listings", []) if "p50_ms" in r]
    cell = next((r for r in rows if r["kernels"] == 1000 and r["backends"] == 4), None)
    v = cell["p50_ms"] if cell else None
    check("4 backends x 1,000 kernels, listing p50 (ms)", "<= 10 ms", v, v is not None and v <= 10)
    f = pooled_fit({0: ws_points(sec)})
    v = 1024 * f[0] if f else None
    check("RSS per idle kernel websocket (KiB)", "<= 16 KiB", v, v is not None and v <= 16)
    big = next((r for r in sec.get("websockets", {}).get("rows", []) if r["websockets"] == 5000), None)
    v = big["open_errors"] + big["rt_errors"] if big else None
    check("5,000 websockets through one mixer, errors", "0", v, v == 0)
