"""``mixer lab``'s plan and the mixer config it writes (no process is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from notebook_kernels_mixer.cli import config_from_argv
from notebook_kernels_mixer.config import CARRY_BUDGET, MixerConfig
from notebook_kernels_mixer.config_file import load_files
from notebook_kernels_mixer.jupyter import CARRY_MARGIN
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


def mixer_config_of(plan: topology.Plan) -> MixerConfig:
    """The config the mixer child will run with: its command line and environment."""
    child = topology.mixer(plan, topology.write_mixer_config(plan))
    assert child.argv[1:3] == ["-m", "notebook_kernels_mixer"]
    return config_from_argv(child.argv[3:], environ=child.env)


def front_argv(plan: topology.Plan) -> list[str]:
    return topology.front(plan)[0].argv


def test_carrying_variables_is_off_unless_asked_and_the_banner_says_how(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, "--demo-remote")
    assert not plan.carry.enabled and not mixer_config_of(plan).carry_variables
    # the front asks anyway: a mixer that carries nothing answers so at once
    argv = front_argv(plan)
    assert topology.SESSION_MANAGER_FLAG in argv
    assert f"--CarryingSessionManager.carry_timeout={CARRY_BUDGET + CARRY_MARGIN!r}" in argv
    text = command.banner(plan, topology.FrontInfo(plan, topology.front(plan)[0]))
    assert "Change Kernel starts an empty kernel; --carry-variables carries" in text


def test_carry_variables_reaches_the_mixer_and_the_front_waits_beyond_its_budget(tmp_path: Path) -> None:
    plan = plan_for(
        tmp_path, "--demo-remote", "--carry-variables", "--carry-budget=1m30s", "--carry-cap=1000"
    )
    config = mixer_config_of(plan)
    assert config.carry_variables and config.carry_budget == 90.0 and config.carry_cap == 1000
    argv = front_argv(plan)
    timeout = f"--CarryingSessionManager.carry_timeout={90.0 + CARRY_MARGIN!r}"
    assert timeout in argv
    # the user's own front arguments come later, and so win
    later = plan_for(tmp_path, "--carry-variables", "--", "--CarryingSessionManager.carry_timeout=500")
    assert front_argv(later)[-1] == "--CarryingSessionManager.carry_timeout=500"
    text = command.banner(plan, topology.FrontInfo(plan, topology.front(plan)[0]))
    assert "Change Kernel carries the notebook's variables (up to 90 s)" in text
    assert "remote machines included" in text


def test_carry_settings_of_the_users_files_count_for_the_banner_and_the_front(tmp_path: Path) -> None:
    user = tmp_path / "user.toml"
    user.write_text('[mixer]\ncarry_variables = true\ncarry_budget = "2m"\n')
    args, front_args = command.parse([f"--log-dir={tmp_path}", "--demo-remote", f"--config={user}"])
    plan = topology.make_plan(args, front_args, command.remote_names(args))
    assert plan.carry.enabled and plan.carry.budget == 120.0 and plan.carry.mixer_flags == ()
    config = mixer_config_of(plan)  # the mixer reads the same file
    assert config.carry_variables and config.carry_budget == 120.0
    assert f"--CarryingSessionManager.carry_timeout={120.0 + CARRY_MARGIN!r}" in front_argv(plan)
    # lab's flag wins over the file, as the mixer's does
    args, front_args = command.parse([f"--log-dir={tmp_path}", f"--config={user}", "--carry-budget=5"])
    assert topology.make_plan(args, front_args, ()).carry.budget == 5.0


def test_a_bad_carry_budget_is_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        command.parse(["--carry-budget=soon"])
    assert "invalid duration 'soon'" in capsys.readouterr().err
