"""CI version of the soak (issue 5, item 3): ``python -m tests.soak`` for 60 seconds.

The command runs as a subprocess, exactly as a person would run it; its verdict is
its exit status and its JSON report. Override the length with ``MIXER_SOAK_SECONDS``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from notebook_kernels_mixer.processes import descendants

ROOT = Path(__file__).resolve().parents[2]
DURATION = float(os.environ.get("MIXER_SOAK_SECONDS") or 60)
# topology start and stop, the workers' last operations and the cleanup, on a slow machine
OVERHEAD = 240

pytestmark = [pytest.mark.soak, pytest.mark.timeout(DURATION + OVERHEAD + 90)]


def test_soak(tmp_path: Path) -> None:
    workdir, report_path = tmp_path / "run", tmp_path / "soak-report.json"
    argv = [
        sys.executable, "-m", "tests.soak",
        f"--duration={DURATION:g}", f"--workdir={workdir}", f"--report={report_path}",
    ]  # fmt: skip
    with open(tmp_path / "stdout.txt", "w+") as out, open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            proc.wait(timeout=DURATION + OVERHEAD)
        except subprocess.TimeoutExpired:
            _stop(proc, workdir)
            pytest.fail(f"the soak did not finish within {DURATION + OVERHEAD:.0f}s\n{_tail(err)}")
        output = f"--- stdout ---\n{_tail(out)}\n--- stderr ---\n{_tail(err)}"
    assert proc.returncode != 2, f"the soak could not run\n{output}"
    assert report_path.exists(), f"no report written (exit status {proc.returncode})\n{output}"
    report = json.loads(report_path.read_text())
    failed = [name for name, check in report["checks"].items() if not check["ok"]]
    assert proc.returncode == 0 and report["ok"], f"soak failed: {failed}\n{output}"
    print(output)


def _tail(f, limit: int = 8000) -> str:
    f.seek(0)
    return f.read()[-limit:]


def _stop(proc: subprocess.Popen, workdir: Path) -> None:
    """SIGTERM lets the soak stop its topology; if it does not, stop that by PID."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
        return
    except subprocess.TimeoutExpired:
        pass
    pids_file = workdir / "pids.json"
    leaders = list(json.loads(pids_file.read_text()).values()) if pids_file.exists() else []
    victims = [p for leader in leaders for p in descendants(leader)]  # kernels live in other groups
    proc.kill()
    proc.wait(timeout=10)
    for leader in leaders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, signal.SIGKILL)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
