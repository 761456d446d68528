"""``mixer lab``'s plan and the mixer config it writes (no process is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from notebook_kernels_mixer.config_file import load_files
from notebook_kernels_mixer.lab import command, topology


def plan_for(tmp_path: Path, *argv: str, remotes: tuple[str, ...] = ()) -> topology.Plan:
    args, front_args = command.parse([f"--log-dir={tmp_path}", *argv])
    return topology.make_plan(args, front_args, remotes)


def test_the_mixer_config_is_written_from_data_and_reads_back(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, "--demo-remote", '--ServerApp.root_dir=/tmp/a "quoted" dir')
    path = topology.write_mixer_config(plan)
    env = {topology.LOCAL_TOKEN_ENV: plan.local.token, topology.DEMO_TOKEN_ENV: plan.servers[1].token}
    settings = load_files([path], environ=env)
    got = {fb.config.name: fb for fb in settings.backends}
    assert list(got) == ["local", "remote"]
    for server in plan.servers:
        backend = got[server.name].config
        assert backend.url == f"http://127.0.0.1:{server.port}/"
        assert backend.display_suffix == server.suffix and backend.sessions == "backend"
        assert backend.auth == "token" and backend.token == server.token
    assert got["local"].local and not got["remote"].local
    assert settings.token == plan.local.token  # what clients present to the mixer
    assert settings.state_file == str(plan.run_dir / "mixer-state.sqlite")
    assert plan.local.token not in path.read_text()  # tokens by variable name only
    assert plan.front_args == ('--ServerApp.root_dir=/tmp/a "quoted" dir',)


def test_the_demo_remote_steps_aside_for_a_configured_remote(tmp_path: Path) -> None:
    user = tmp_path / "user.toml"
    user.write_text('[[backends]]\nname = "remote"\nurl = "https://gw.example.invalid/"\nauth = "none"\n')
    args, front_args = command.parse([f"--log-dir={tmp_path}", "--demo-remote", f"--config={user}"])
    plan = topology.make_plan(args, front_args, command.remote_names(args))
    assert plan.demo is not None and (plan.demo.name, plan.demo.suffix) == ("demo", " (Demo remote)")
    # what the mixer will read (the user's files, then the lab's): no name taken twice
    lab_config = topology.write_mixer_config(plan)
    env = {topology.LOCAL_TOKEN_ENV: plan.local.token, topology.DEMO_TOKEN_ENV: plan.demo.token}
    settings = load_files([*plan.user_configs, lab_config], environ=env)
    got = {fb.config.name: fb.config for fb in settings.backends}
    assert list(got) == ["remote", "local", "demo"]
    assert got["remote"].url == "https://gw.example.invalid/"
    assert got["demo"].url == f"http://127.0.0.1:{plan.demo.port}/"
    assert got["demo"].display_suffix == " (Demo remote)"
    assert len({s.port for s in plan.servers} | {plan.mixer_port, plan.front_port}) == 4
    # without a configured remote the demo is the remote
    alone = plan_for(tmp_path, "--demo-remote")
    assert alone.demo is not None and (alone.demo.name, alone.demo.suffix) == ("remote", " (Remote)")


@pytest.mark.parametrize(
    ("argv", "opens"),
    [
        ((), True),
        (("--browser",), True),
        (("--no-browser",), False),
        (("--browser", "--no-browser"), False),
        (("--", "--no-browser"), False),
        (("--ServerApp.open_browser=False",), False),
    ],
)
def test_the_browser_opens_unless_no_browser(tmp_path: Path, argv: tuple[str, ...], opens: bool) -> None:
    plan = plan_for(tmp_path, *argv)
    assert plan.open_browser is opens
    assert "--browser" not in plan.front_args  # never handed on: JupyterLab does not know it
