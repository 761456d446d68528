"""Backends from TOML files (`mixer --config FILE`) and their precedence with the flags."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from notebook_kernels_mixer import cli, lab
from notebook_kernels_mixer.cli import config_from_argv, mixer_parser, parse_flags
from notebook_kernels_mixer.config import BackendConfig, MixerConfig
from notebook_kernels_mixer.config_file import ConfigFileError, load_files

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mixer.toml"


def write(tmp_path: Path, text: str, name: str = "mixer.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def combined(files: list[Path], *argv: str, environ: dict[str, str] | None = None) -> MixerConfig:
    return config_from_argv([*(f"--config={f}" for f in files), *argv], environ=environ or {})


def backend(cfg: MixerConfig, name: str) -> BackendConfig:
    return next(b for b in cfg.backends if b.name == name)


# -- the shipped example ----------------------------------------------------------------------
def test_the_example_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".config" / "mixer").mkdir(parents=True)
    (tmp_path / ".config" / "mixer" / "kg.token").write_text("kg-secret\n")
    env = {"JUPYTER_TOKEN": "local-secret", "EG_TOKEN": "eg-secret"}
    cfg = combined([EXAMPLE], environ=env)
    assert [b.name for b in cfg.backends] == ["local", "remote", "kg", "cluster"]
    assert cfg.local_backend == "local" and cfg.default_backend == "remote"
    assert cfg.token == "local-secret"  # the local backend's token admits clients
    kg, cluster = backend(cfg, "kg"), backend(cfg, "cluster")
    assert kg.token == "kg-secret" and kg.auth == "token"
    assert kg.request_timeout == 30.0 and kg.list_timeout == 2.5
    assert kg.sessions == "auto" and cluster.sessions == "mixer"
    assert cluster.request_timeout == 120.0 and cluster.token == "eg-secret"
    assert backend(cfg, "remote").auth == "gcloud"
    assert "secret" not in repr(cfg)


# -- precedence -----------------------------------------------------------------------------------
REMOTES_ONLY = """
    [[backends]]
    name = "kg"
    display_suffix = " (KG)"
    url = "http://127.0.0.1:8890/"
    auth = "token"
    token_env = "KG_TOKEN"

    [[backends]]
    name = "eg"
    url = "https://eg.example.com/base/"
    auth = "none"
    request_timeout = 60
"""


def test_remotes_only_file_takes_local_from_the_flags(tmp_path: Path) -> None:
    path = write(tmp_path, REMOTES_ONLY)
    cfg = combined([path], "--jupyter-port=9000", "--jupyter-token=tok",
                   "--context_request_timeout=20s", environ={"KG_TOKEN": "k"})
    assert [b.name for b in cfg.backends] == ["local", "kg", "eg"]
    local = backend(cfg, "local")
    assert local.url == "http://localhost:9000/" and local.token == "tok"
    assert cfg.local_backend == "local"
    assert cfg.default_backend == "kg"  # first backend that is not the local one
    assert cfg.token == "tok"
    kg, eg = backend(cfg, "kg"), backend(cfg, "eg")
    assert kg.request_timeout == 20.0 and kg.list_timeout == 2.5  # from the flags
    assert eg.request_timeout == 60.0 and eg.display_suffix == " (eg)"


def test_flags_override_the_files_local_and_remote(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    path = write(tmp_path, """
        [mixer]
        port = 7000

        [[backends]]
        name = "laptop"
        url = "http://localhost:8888/"
        auth = "token"
        token_env = "LAPTOP_TOKEN"
        local = true

        [[backends]]
        name = "remote"
        url = "https://old.example.com"
        auth = "token"
        token_env = "REMOTE_TOKEN"
        default = true
    """)
    env = {"LAPTOP_TOKEN": "lt", "REMOTE_TOKEN": "rt"}
    cfg = combined([path], environ=env)
    assert cfg.port == 7000 and cfg.local_backend == "laptop" and cfg.token == "lt"
    cfg = combined([path], "--port=7100", "--jupyter-port=9001", "--remote-url=http://127.0.0.1:5/",
                   environ=env)
    assert cfg.port == 7100
    laptop, remote = backend(cfg, "laptop"), backend(cfg, "remote")
    assert laptop.url == "http://localhost:9001/" and laptop.token == "lt"
    assert remote.url == "http://127.0.0.1:5/"
    assert remote.auth == "token" and remote.token == "rt"  # the file's auth is kept
    assert [b.name for b in cfg.backends] == ["laptop", "remote"]
    cfg = combined([path], "-jupyter-token=flagtok", environ=env)  # Go-style single dash
    assert backend(cfg, "laptop").token == "flagtok" and cfg.token == "flagtok"


def test_seed_remote_is_added_when_the_file_has_none(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    path = write(tmp_path, """
        [[backends]]
        name = "local"
        url = "http://localhost:8888/"
    """)
    cfg = combined([path], "--mixer-project=p", "--mixer-region=r",
                   "--gce-metadata-override-ip=1.2.3.4")
    assert [b.name for b in cfg.backends] == ["local", "remote"]
    assert cfg.default_backend == "remote" and cfg.token is None
    remote = backend(cfg, "remote")
    assert remote.auth == "google-adc" and remote.gce_metadata_ip == "1.2.3.4"


def test_mixer_table_token_and_several_files(tmp_path: Path) -> None:
    first = write(tmp_path, REMOTES_ONLY, "a.toml")
    second = write(tmp_path, """
        [mixer]
        token_file = "secrets/client.token"
        external_hostname = "nb.example.com"

        [[backends]]
        name = "gpu"
        url = "http://gpu.example.com:8888"
        default = true
    """, "b.toml")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "client.token").write_text("  client-tok \n")
    cfg = combined([first, second], "--jupyter-token=local-tok", environ={"KG_TOKEN": "k"})
    assert [b.name for b in cfg.backends] == ["local", "kg", "eg", "gpu"]
    assert cfg.default_backend == "gpu" and cfg.external_hostname == "nb.example.com"
    assert cfg.token == "local-tok"  # --jupyter-token wins
    cfg = combined([first, second], environ={"KG_TOKEN": "k"})
    assert cfg.token == "client-tok"  # relative to the file, stripped


def test_the_flags_given_are_told_from_the_defaults() -> None:
    assert parse_flags([]).given == {}
    argv = ["--port", "1", "-jupyter-token=x", "--config=a", "--log-all-request-headers",
            "--config", "b", "--retention=1m"]
    flags = parse_flags(argv)
    assert flags.given == {"port": 1, "jupyter_token": "x", "config": ["a", "b"],
                           "log_all_request_headers": True, "retention": 60.0}
    # a flag given with its default's value is still given (it wins over a file)
    assert parse_flags(["--port=8081"]).given == {"port": 8081}
    # the others read as their defaults; the parser keeps them for --help and the README
    assert flags["jupyter_port"] == 8082 and flags["listen"] is None and flags["allow_origin"] == []
    assert flags["context_request_timeout"] == 10.0
    assert mixer_parser().parse_args([]).port == 8081


# -- bad configuration: a clear error naming the file and the entry, exit status 2 ----------------
GOOD_ENTRY = """
    [[backends]]
    name = "kg"
    url = "http://127.0.0.1:8890/"
"""

BAD = {
    "duplicate names": (
        GOOD_ENTRY + GOOD_ENTRY,
        ["backend 'kg' (entry 2)", "duplicate backend name 'kg'", "entry 1"],
    ),
    "unknown auth kind": (
        GOOD_ENTRY + 'auth = "kerberos"\n',
        ["backend 'kg' (entry 1)", "unknown auth kind 'kerberos'", "google-adc"],
    ),
    "missing token file": (
        GOOD_ENTRY + 'auth = "token"\ntoken_file = "nope/kg.token"\n',
        ["backend 'kg' (entry 1)", "token_file", "nope/kg.token", "does not exist"],
    ),
    "token env not set": (
        GOOD_ENTRY + 'auth = "token"\ntoken_env = "MIXER_TEST_UNSET_VAR"\n',
        ["backend 'kg' (entry 1)", "'MIXER_TEST_UNSET_VAR'", "not set"],
    ),
    "token auth without a source": (
        GOOD_ENTRY + 'auth = "token"\n',
        ["backend 'kg' (entry 1)", "token_env", "token_file"],
    ),
    "invalid url": (
        '[[backends]]\nname = "kg"\nurl = "localhost:8890"\n',
        ["backend 'kg' (entry 1)", "invalid url 'localhost:8890'"],
    ),
    "ftp url": (
        '[[backends]]\nname = "kg"\nurl = "ftp://example.com/"\n',
        ["backend 'kg' (entry 1)", "invalid url"],
    ),
    "missing url": (
        '[[backends]]\nname = "kg"\n',
        ["backend 'kg' (entry 1)", "'url' is required"],
    ),
    "unknown key": (
        GOOD_ENTRY + 'tokn_file = "x"\n',
        ["backend 'kg' (entry 1)", "unknown key 'tokn_file'", "did you mean 'token_file'"],
    ),
    "unknown top-level key": (
        GOOD_ENTRY.replace("[[backends]]", "[[backend]]"),
        ["top level", "unknown key 'backend'", "did you mean 'backends'"],
    ),
    "unknown mixer key": (
        "[mixer]\nprot = 1\n",
        ["[mixer]", "unknown key 'prot'", "did you mean 'port'"],
    ),
    "token written inline": (
        GOOD_ENTRY + 'auth = "token"\ntoken = "s3cret"\n',
        ["backend 'kg' (entry 1)", "never written in the configuration", "token_env"],
    ),
    "bad name": (
        '[[backends]]\nname = "My-GPU"\nurl = "http://x/"\n',
        ["backend 'My-GPU' (entry 1)", "'My-GPU' must match [a-z0-9_]+"],
    ),
    "missing name": (
        '[[backends]]\nurl = "http://x/"\n',
        ["[[backends]] entry 1", "'name' is required"],
    ),
    "two defaults": (
        GOOD_ENTRY + "default = true\n" + GOOD_ENTRY.replace("kg", "eg") + "default = true\n",
        ["backend 'eg' (entry 2)", "more than one backend has default = true", "backend 'kg'"],
    ),
    "two locals": (
        GOOD_ENTRY + "local = true\n" + GOOD_ENTRY.replace("kg", "eg") + "local = true\n",
        ["backend 'eg' (entry 2)", "more than one backend has local = true"],
    ),
    "token file with auth none": (
        GOOD_ENTRY + 'token_file = "x"\n',
        ["backend 'kg' (entry 1)", "need auth = \"token\""],
    ),
    "bad timeout": (
        GOOD_ENTRY + 'request_timeout = "soon"\n',
        ["backend 'kg' (entry 1)", "request_timeout", "invalid duration 'soon'"],
    ),
    "negative timeout": (
        GOOD_ENTRY + "list_timeout = -1\n",
        ["backend 'kg' (entry 1)", "list_timeout", "must be positive"],
    ),
    "unknown sessions mode": (
        GOOD_ENTRY + 'sessions = "maybe"\n',
        ["backend 'kg' (entry 1)", "unknown sessions 'maybe'"],
    ),
    "wrong type": (
        GOOD_ENTRY + 'default = "yes"\n',
        ["backend 'kg' (entry 1)", "default must be true or false"],
    ),
    "invalid toml": (
        '[[backends]]\nname = "kg\n',
        ["invalid TOML"],
    ),
    "backends not an array": (
        'backends = "kg"\n',
        ["'backends' must be an array of tables"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_configuration_is_a_clear_error(tmp_path: Path, case: str, capsys) -> None:
    text, expected = BAD[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as info:
        load_files([path], environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    # the command line says the same and exits with status 2, before serving anything
    assert cli.main(["--config", str(path), "--port=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixer: ") and str(path) in err and expected[-1] in err


def test_missing_file(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.toml"
    assert cli.main(["--config", str(missing)]) == 2
    assert f"{missing}: configuration file not found" in capsys.readouterr().err


def test_the_mixer_command_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_ENTRY + GOOD_ENTRY)
    proc = subprocess.run(
        [sys.executable, "-m", "notebook_kernels_mixer", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"{path}: backend 'kg' (entry 2): duplicate backend name 'kg'" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- mixer lab refuses a bad or conflicting file before it starts anything --------------------
def test_lab_checks_the_config_first(tmp_path: Path, capsys) -> None:
    bad = write(tmp_path, GOOD_ENTRY + 'auth = "nope"\n', "bad.toml")
    assert lab.main(["--config", str(bad), "--log-dir", str(tmp_path / "logs")]) == 2
    assert "unknown auth kind 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()  # nothing was started
    local = write(tmp_path, '[[backends]]\nname = "local"\nurl = "http://localhost:1/"\n', "l.toml")
    assert lab.main(["--config", str(local)]) == 2
    assert "mixer lab starts the local backend itself" in capsys.readouterr().err


def test_the_answer_cap_from_the_mixer_table_and_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [mixer]
        max_backend_answer = 2048

        [[backends]]
        name = "kg"
        url = "http://127.0.0.1:8890/"
    """)
    cfg = combined([path], "--remote-url=http://h")
    assert {b.name: b.max_answer_bytes for b in cfg.backends} == {"local": 2048, "kg": 2048,
                                                                  "remote": 2048}
    cfg = combined([path], "--max-backend-answer=4096")  # the flag wins
    assert {b.max_answer_bytes for b in cfg.backends} == {4096}
    bad = write(tmp_path, "[mixer]\nmax_backend_answer = \"64MiB\"\n", "bad.toml")
    with pytest.raises(ConfigFileError, match="max_backend_answer must be a positive integer"):
        load_files([bad])
