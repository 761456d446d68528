"""``notebook_kernels_mixer.processes``: the one ``Process`` class (start, readiness, freeze
and thaw, the stop of a group and of what it left in other sessions, the PID-reuse guard)
driven with small Python children, and the jupyter_server launcher's argv and environment.

Every child is stopped by its PID at the end of its test; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from notebook_kernels_mixer.processes import (
    GATEWAY_HEADERS_ENV,
    Process,
    ProcessError,
    gateway_headers,
    is_alive,
    jupyter_server_launch,
    start_time,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

WAIT = 30.0  # upper bound of every wait below; none is expected to come near it

# A child that says "ready" once its handlers are in place, writes the name of every
# SIGUSR1/SIGUSR2 it gets to the file in argv[1], and ends cleanly on SIGTERM.
SIGNALLED = """
import signal, sys, time
out = sys.argv[1]
def note(signum, frame):
    with open(out, "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
signal.signal(signal.SIGUSR1, note)
signal.signal(signal.SIGUSR2, note)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""

# A child that starts a grandchild (argv[1]: "group" in its own process group, or
# "session" in a session of its own, as jupyter_client starts kernels), writes its PID to
# argv[2], says "ready" (or exits, with argv[3] "exit"), and on SIGTERM leaves it behind.
# The grandchild ignores SIGTERM and writes "alive" to argv[2] + ".usr1" on SIGUSR1.
GRANDPARENT = """
import subprocess, sys, time
grandchild = '''
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def alive(*_):
    open(sys.argv[1] + ".usr1", "w").write("alive")
signal.signal(signal.SIGUSR1, alive)
print("grandchild ready", flush=True)
while True:
    time.sleep(0.05)
'''
where, pid_file = sys.argv[1], sys.argv[2]
child = subprocess.Popen([sys.executable, "-c", grandchild, pid_file],
                         start_new_session=where == "session")
open(pid_file, "w").write(str(child.pid))
if sys.argv[3:] == ["exit"]:
    sys.exit(0)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"not within {WAIT:g}s: {what}"
        time.sleep(0.02)


def state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2 :].split()[0]


def logged(process: Process, line: str) -> Callable[[], bool]:
    """Whether the child printed ``line`` (the log's start line shows the code that prints it)."""
    return lambda: line in process.log_text().splitlines()


class Children:
    """Makes ``Process``es of ``python -c CODE ARGS``; at the end stops every one, and
    kills by PID the other PIDs a test adds to ``others``."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.made: list[Process] = []
        self.others: list[int] = []

    def __call__(self, code: str, *args: str, reap_grace: float = 5.0,
                 ready: Callable[[], bool] | None = None) -> Process:  # fmt: skip
        name = f"child{len(self.made)}"
        process = Process(name, [sys.executable, "-c", code, *args], log_path=self.tmp_path / f"{name}.log",
                          cwd=self.tmp_path, ready=ready, reap_grace=reap_grace)  # fmt: skip
        self.made.append(process)
        return process

    def close(self) -> None:
        for process in self.made:
            process.reap_grace = 0
            process.stop(timeout=5)
        for pid in self.others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Children]:
    children = Children(tmp_path)
    yield children
    children.close()


def grandchild_of(tmp_path: Path) -> int:
    pid_file = tmp_path / "grandchild.pid"
    until(lambda: pid_file.exists() and pid_file.read_text() != "", "the grandchild's PID")
    return int(pid_file.read_text())


def signalled(processes: Children, tmp_path: Path) -> Process:
    """A started SIGNALLED child (ready once its handlers are in place)."""
    child = processes(SIGNALLED, str(tmp_path / "signals"))
    child.ready = logged(child, "ready")
    return child.start()


def with_grandchild(
    processes: Children, tmp_path: Path, where: str, reap_grace: float = 5.0
) -> tuple[Process, int]:
    """A started GRANDPARENT child (ready once its grandchild is) and the grandchild's PID."""
    child = processes(GRANDPARENT, where, str(tmp_path / "grandchild.pid"), reap_grace=reap_grace)
    child.ready = logged(child, "grandchild ready")
    child.start()
    grandchild = grandchild_of(tmp_path)
    processes.others.append(grandchild)
    return child, grandchild


# -- start and readiness -------------------------------------------------------------------------
def test_start_waits_for_the_probe_in_a_session_of_its_own_and_stop_ends_it(
    processes: Children, tmp_path: Path
) -> None:
    child = processes(SIGNALLED, str(tmp_path / "signals"))
    child.ready = logged(child, "ready")
    assert child.start() is child
    assert "ready" in child.log_text().splitlines()
    assert child.running() and child.starts == 1
    assert child.pid is not None and os.getsid(child.pid) == child.pid  # leads its own session
    assert child.started_at == start_time(child.pid)
    assert child.log_text().startswith(f"\n===== start #1: {sys.executable} -c")
    assert child.stop() == 0  # its SIGTERM handler ran
    assert not child.running() and not child.forced


def test_wait_ready_raises_with_the_log_when_the_child_exits_first(processes: Children) -> None:
    child = processes("import sys; print('boom: bad flag', flush=True); sys.exit(2)")
    child.ready = lambda: False
    with pytest.raises(ProcessError, match=r"exited with code 2 before it was ready\n(.|\n)*boom: bad flag"):
        child.start()


def test_wait_ready_stops_a_child_that_is_not_ready_in_time(processes: Children) -> None:
    child = processes("import time; time.sleep(600)", ready=lambda: False)
    child.start(wait=False)
    with pytest.raises(ProcessError, match="not ready within"):
        child.wait_ready(timeout=0.2)
    assert not child.running()


def test_restart_starts_again_with_what_argv_and_env_now_say(processes: Children) -> None:
    child = processes("import os, time; print('value', os.environ['VALUE'], flush=True); time.sleep(600)")
    child.env["VALUE"] = "one"
    child.ready = logged(child, "value one")
    child.start()
    child.env["VALUE"] = "two"
    child.ready = logged(child, "value two")
    child.restart()
    assert child.starts == 2 and "===== start #2" in child.log_text()


# -- wait_exit -----------------------------------------------------------------------------------
def test_wait_exit_returns_the_status_of_a_child_that_ends_by_itself(processes: Children) -> None:
    child = processes("import sys; sys.exit(3)").start(wait=False)
    assert child.wait_exit(WAIT) == 3
    assert child.returncode == 3


def test_wait_exit_raises_when_the_child_still_runs(processes: Children) -> None:
    child = processes("import time; time.sleep(600)").start(wait=False)
    with pytest.raises(ProcessError, match="still runs after"):
        child.wait_exit(0.1)
    assert child.running()


# -- freeze and thaw -----------------------------------------------------------------------------
def test_freeze_stops_the_process_and_thaw_continues_it(
    processes: Children, tmp_path: Path
) -> None:
    child = signalled(processes, tmp_path)
    assert child.pid is not None
    child.freeze()
    until(lambda: state(child.pid or 0) == "T", "stopped by SIGSTOP")
    assert child.frozen
    child.thaw()
    until(lambda: state(child.pid or 0) != "T", "continued by SIGCONT")
    assert not child.frozen


def test_a_frozen_process_is_continued_so_that_stop_ends_it_cleanly(
    processes: Children, tmp_path: Path
) -> None:
    child = signalled(processes, tmp_path)
    child.freeze()
    until(lambda: state(child.pid or 0) == "T", "stopped by SIGSTOP")
    # a stopped process would keep its SIGTERM pending and be killed after the grace
    assert child.stop(timeout=WAIT) == 0
    assert not child.forced


def test_freeze_of_a_process_that_is_not_running_raises(processes: Children) -> None:
    child = processes("pass")
    with pytest.raises(ProcessError, match="nothing to freeze"):
        child.freeze()


# -- the stop of a group and of what it left behind ----------------------------------------------
def test_stop_kills_a_grandchild_left_in_its_process_group(
    processes: Children, tmp_path: Path
) -> None:
    child, grandchild = with_grandchild(processes, tmp_path, "group")
    assert os.getpgid(grandchild) == child.pid
    assert child.stop(timeout=WAIT) == -signal.SIGTERM
    until(lambda: not is_alive(grandchild), "the grandchild (SIGTERM ignored) gone")


def test_stop_after_the_leader_exited_kills_what_is_left_in_its_group(
    processes: Children, tmp_path: Path
) -> None:
    child = processes(GRANDPARENT, "group", str(tmp_path / "grandchild.pid"), "exit", reap_grace=0)
    child.start(wait=False)
    grandchild = grandchild_of(tmp_path)
    processes.others.append(grandchild)
    assert child.wait_exit(WAIT) == 0  # the leader is gone; its group lives on
    assert is_alive(grandchild) and os.getpgid(grandchild) == child.pid
    child.stop()
    until(lambda: not is_alive(grandchild), "the group's last member killed")


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace(processes: Children) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(600)")  # fmt: skip
    child = processes(code)
    child.ready = logged(child, "ready")
    child.start()
    assert child.stop(timeout=0.3) == -signal.SIGKILL
    assert child.forced


def test_stop_kills_by_pid_a_descendant_left_in_another_session(
    processes: Children, tmp_path: Path
) -> None:
    child, kernel = with_grandchild(processes, tmp_path, "session", reap_grace=0.2)
    assert os.getsid(kernel) == kernel  # outside the group: SIGKILL to the group misses it
    child.stop(timeout=WAIT)
    until(lambda: not is_alive(kernel), "the descendant of another session killed by PID")


def test_descendants_remembered_while_the_process_ran_are_killed_after_it_died(
    processes: Children, tmp_path: Path
) -> None:
    child, kernel = with_grandchild(processes, tmp_path, "session", reap_grace=0.2)
    child.remember_descendants()
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)  # the server crashes; its kernel is no longer its descendant
    child.wait_exit(WAIT)
    child.stop()
    until(lambda: not is_alive(kernel), "the remembered descendant killed by PID")


# -- the PID-reuse guard -------------------------------------------------------------------------
def test_a_remembered_pid_whose_start_time_differs_is_not_signalled(
    processes: Children, tmp_path: Path
) -> None:
    """A PID remembered as a descendant but started at another time is another process
    that got the same PID: stop leaves it alone."""
    child, other = with_grandchild(processes, tmp_path, "session", reap_grace=0.2)
    recorded = start_time(other)
    assert recorded is not None
    child.known_descendants[other] = recorded - 1  # as if this PID had been reused since
    child.stop(timeout=WAIT)
    # SIGUSR1 after the stop: had the stop sent SIGKILL, that comes first and nothing is written
    os.kill(other, signal.SIGUSR1)
    usr1 = tmp_path / "grandchild.pid.usr1"
    until(lambda: usr1.exists() or not is_alive(other), "the SIGUSR1 answered, or the process gone")
    assert usr1.exists(), "the stop killed a process whose start time did not match"


def test_the_group_is_not_signalled_once_its_pid_names_another_process(
    processes: Children, tmp_path: Path
) -> None:
    signals = tmp_path / "signals"
    child = signalled(processes, tmp_path)
    recorded = child.started_at
    assert recorded is not None
    child.started_at = recorded + 1  # as if the PID had been handed to a new process
    child.signal_group(signal.SIGUSR1)
    child.started_at = recorded
    child.signal_group(signal.SIGUSR2)
    # SIGUSR1 would be handled no later than SIGUSR2 (a lower number goes first)
    until(lambda: signals.exists() and "SIGUSR2" in signals.read_text(), "SIGUSR2 received")
    assert "SIGUSR1" not in signals.read_text()


# -- the jupyter_server launcher -----------------------------------------------------------------
def test_launch_puts_a_token_in_the_environment_and_the_directories_under_home(tmp_path: Path) -> None:
    argv, env = jupyter_server_launch(8123, env={"KEEP": "1"}, token="secret", home=tmp_path / "h",
                                      extra_args=["--last=1"], python="py")  # fmt: skip
    assert argv[:6] == ["py", "-m", "jupyter_server", "--no-browser", "--port-retries=0", "--port=8123"]
    assert not any("secret" in a for a in argv)
    assert env["JUPYTER_TOKEN"] == "secret" and env["KEEP"] == "1"
    assert f"--ServerApp.root_dir={tmp_path / 'h' / 'root'}" in argv
    for variable, d in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                        ("JUPYTER_DATA_DIR", "data"), ("IPYTHONDIR", "ipython")):  # fmt: skip
        assert env[variable] == str(tmp_path / "h" / d) and Path(env[variable]).is_dir()
    assert argv[-1] == "--last=1"


def test_launch_without_a_token_turns_token_auth_off_on_the_command_line() -> None:
    argv, env = jupyter_server_launch(8123, env={}, token="")
    assert "--IdentityProvider.token=" in argv and "JUPYTER_TOKEN" not in env
    argv, env = jupyter_server_launch(8123, env={}, token="t", token_in_argv=True)
    assert "--IdentityProvider.token=t" in argv and "JUPYTER_TOKEN" not in env
    argv, env = jupyter_server_launch(8123, env={}, token=None)
    assert not any(a.startswith("--IdentityProvider.token") for a in argv) and "JUPYTER_TOKEN" not in env


def test_launch_of_a_front_has_the_gateway_and_spec_headers_in_the_environment() -> None:
    headers = gateway_headers("mixer-token", "X1")
    assert headers == {"token": "mixer-token", "Cookie": "_xsrf=X1", "X-XSRFToken": "X1"}
    argv, env = jupyter_server_launch(8123, env={}, app="jupyterlab", ip="127.0.0.1",
                                      gateway_url="http://[::1]:9/", gateway=headers)  # fmt: skip
    assert argv[2] == "jupyterlab"
    assert "--GatewayClient.url=http://[::1]:9/" in argv and "--ServerApp.ip=127.0.0.1" in argv
    assert json.loads(env[GATEWAY_HEADERS_ENV]) == headers
    assert not any("mixer-token" in a for a in argv)
