"""Building blocks of the benchmark's report: number formats, plain-text tables, cells
that show a median with its ratio to direct, and the collected targets.

A cell reads ``median (ratio to direct [range of the per-round ratios])``: the ratio of
medians from the same run, and how far single rounds drifted from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.driver import med


def fmt(value: float | str | None, digits: int = 3) -> str:
    if isinstance(value, str):
        return value
    if value is None or value != value:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def rfmt(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


class Table:
    """A left-aligned text table with a title and a rule under the header."""

    def __init__(self, title: str, columns: list[str]) -> None:
        self.title, self.columns = title, columns
        self.rows: list[list[str]] = []

    def add(self, *cells: str) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        rows = [self.columns, *self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.columns))]
        lines = [self.title]
        for i, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


def ratio_range(rounds: list[dict], base: list[dict], key: str) -> tuple[float, float] | None:
    ratios = [
        a[key] / b[key]
        for a, b in zip(rounds, base, strict=False)
        if isinstance(a.get(key), (int, float)) and isinstance(b.get(key), (int, float)) and b[key]
    ]
    return (min(ratios), max(ratios)) if ratios else None


def cell(test: dict, name: str, key: str, higher_better: bool = False, ratio: bool = True,
         base: str = "direct") -> str:
    """The median of ``key`` for ``name``, with its ratio to ``base`` unless it is the base."""
    rounds = test.get(name)
    if not rounds:
        return "-"
    value = med(rounds, key)
    text = fmt(value)
    failed = sum("failed" in r for r in rounds)
    if ratio and name != base and value is not None:
        base_value = med(test.get(base, []), key)
        if base_value:
            rr = ratio_range(rounds, test[base], key)
            text += f" ({rfmt(value / base_value)}x"
            text += f" [{rfmt(rr[0])}-{rfmt(rr[1])}])" if rr and len(rounds) > 1 else ")"
    if failed:
        text += f" !{failed} failed"
    return text


def noise(tests: dict, name: str) -> float | None:
    """Worst median CPU % used by processes outside the benchmark, over tests."""
    values = [med(test.get(name, []), "other_cpu_pct") for test in tests.values()]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def ratio_of(test: dict, name: str, key: str, base: str = "direct") -> float | None:
    value, base_value = med(test.get(name, []), key), med(test.get(base, []), key)
    return value / base_value if value is not None and base_value else None


def errors_of(rounds: list[dict]) -> int:
    """Errors counted by the rounds plus the rounds that failed outright."""
    return sum(r.get("errors", 0) + ("failed" in r) for r in rounds)


def names_of(test: dict) -> list[str]:
    return [n for n in test if not n.startswith("_")]


@dataclass
class Report:
    """The report's text, section by section, and every target checked on the way."""

    lines: list[str] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.lines.append(text)

    def target(self, figure: str, goal: str, config: str, value: float | str | None, ok: bool | None) -> None:
        self.targets.append({"figure": figure, "target": goal, "config": config, "value": value, "ok": ok})

    def targets_table(self, title: str = "\nTargets (issue 3)") -> str:
        t = Table(title, ["figure", "target", "config", "measured", "verdict"])
        for x in self.targets:
            v = x["value"]
            is_ratio = "x" in x["target"] and isinstance(v, float)
            measured = f"{v:.3f}x" if is_ratio and 0.1 <= v < 10 else fmt(v) + ("x" if is_ratio else "")
            verdict = {True: "ok", False: "MISS", None: "info"}[x["ok"]]
            t.add(x["figure"], x["target"], x["config"], measured, verdict)
        return t.render()


def spy_summary(label: str, path: Path, top: int = 12) -> str:
    """Hot spots from a py-spy raw (collapsed) profile: leaf frames, and the deepest
    mixer frame of each sample (which line of the mixer's code the time is spent under)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        return f"\nprofile {label}: {exc}"
    leaf: dict[str, int] = {}
    mine: dict[str, int] = {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + int(count)
        own = [f for f in frames if "notebook_kernels_mixer/" in f and not ("cli.py" in f or "__main__" in f)]
        key = own[-1] if own else f"(outside the mixer's code) {frames[-1]}"
        mine[key] = mine.get(key, 0) + int(count)
    total = sum(leaf.values())
    if not total:
        return f"\nprofile {label}: no samples"
    out = [f"\nprofile {label}: {total} samples at 250 Hz ({path})", "  leaf frames:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(leaf.items(), key=lambda x: -x[1])[:top]]
    out.append("  deepest mixer frame:")
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(mine.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(out)
