"""The command line of SPEC §2, compatible with the Go original."""

import argparse

import pytest

from notebook_kernels_mixer.cli import config_from_argv, mixer_parser
from notebook_kernels_mixer.config import BackendConfig, ConfigError, MixerConfig, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("1m", 60.0), ("1m30s", 90.0), ("500ms", 0.5), ("2.5s", 2.5), ("3", 3.0),
     ("1h", 3600.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10x", "s", "-1s", "0s", "10s junk", "ten"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def config(*argv: str) -> MixerConfig:
    return config_from_argv(argv)


def backend(cfg: MixerConfig, name: str) -> BackendConfig:
    return next(b for b in cfg.backends if b.name == name)


def test_defaults_run_local_only() -> None:
    cfg = config()
    assert cfg.port == 8081
    assert [b.name for b in cfg.backends] == ["local"]
    assert cfg.backends[0].url == "http://localhost:8082/"
    assert cfg.backends[0].request_timeout == 10.0
    assert cfg.token is None


def test_project_and_region_make_the_google_url(monkeypatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    cfg = config("--mixer-project=p", "--mixer-region=us-central1", "--jupyter-token=t",
                 "--jupyter-port=9992", "--port=9991")
    remote = backend(cfg, "remote")
    assert remote.url == "https://p-dot-us-central1.kernels.googleusercontent.com"
    assert remote.auth == "google-adc" and remote.display_suffix == " (Remote)"
    assert cfg.default_backend == "remote" and cfg.local_backend == "local"
    local = backend(cfg, "local")
    assert local.auth == "token" and local.token == "t" and local.url == "http://localhost:9992/"
    assert cfg.port == 9991 and cfg.token == "t"
    assert "t" not in repr(local).split("token=")[-1][:3]  # the token is not in repr


def test_remote_url_overrides_and_gcloud_is_preferred(monkeypatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/gcloud")
    cfg = config("--mixer-project=p", "--mixer-region=r", "--mixer-host=example.com",
                 "--remote-url=http://127.0.0.1:1234/base/", "--gce-metadata-override-ip=1.2.3.4",
                 "--context_request_timeout=1m")
    remote = backend(cfg, "remote")
    assert remote.url == "http://127.0.0.1:1234/base/"
    assert remote.auth == "gcloud" and remote.gce_metadata_ip == "1.2.3.4"
    assert remote.request_timeout == 60.0


def test_go_style_single_dash_flags_and_both_timeout_spellings() -> None:
    cfg = config("-port=7000", "-jupyter-port=7001", "--context-request-timeout=3s",
                 "-external-hostname=lab.example.org", "--log-all-request-headers")
    assert cfg.port == 7000 and backend(cfg, "local").url == "http://localhost:7001/"
    assert backend(cfg, "local").request_timeout == 3.0
    assert cfg.external_hostname == "lab.example.org" and cfg.log.request_headers


@pytest.mark.parametrize(
    "kwargs",
    [{"name": "Bad-Name"}, {"auth": "kerberos"}, {"url": "ftp://x"}, {"url": "not a url"},
     {"auth": "token"}, {"request_timeout": 0}],
)
def test_backend_config_validation(kwargs) -> None:
    base = {"name": "ok", "display_suffix": "", "url": "http://localhost:1/"}
    with pytest.raises(ConfigError):
        BackendConfig(**{**base, **kwargs})


def rendered_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help text as ``--help`` prints it (defaults filled in)."""
    formatter = parser._get_formatter()
    return {a.option_strings[0]: formatter._expand_help(a) if a.help else ""
            for a in parser._actions if a.option_strings}


def test_help_explains_every_flag_and_names_its_default_once(capsys) -> None:
    # A help text that names its default itself (--listen, --state-file) ends in
    # '%(default).0s', which prints nothing: argparse would add "(default: None)".
    parser = mixer_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = capsys.readouterr().out
    helps = rendered_help(parser)
    for action in parser._actions:
        name = action.option_strings[0]
        text = helps[name]
        assert len(text) > 10, f"{name}: no help"
        for option in action.option_strings:
            assert option in out, option
        assert text.lower().count("default") <= 1, f"{name} names two defaults: {text}"
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert f"default: {action.default}" in text, f"{name}: default not shown: {text}"


def test_status_help_explains_every_flag() -> None:
    from notebook_kernels_mixer.status_cli import parser

    helps = rendered_help(parser())
    assert set(helps) == {"-h", "--url", "--token", "--json", "--timeout", "--kernels",
                          "--shutdown-orphans"}
    assert "MIXER_URL" in helps["--url"] and "http://127.0.0.1:8081/" in helps["--url"]
    assert "MIXER_TOKEN" in helps["--token"] and "JUPYTER_TOKEN" in helps["--token"]
    assert "default 10" in helps["--timeout"] and parser().get_default("timeout") == 10


def test_non_loopback_listening_needs_explicit_flag() -> None:
    with pytest.raises(ConfigError, match="allow-non-loopback"):
        config("--listen=0.0.0.0")
    with pytest.raises(ConfigError, match=r"192\.168\.1\.5"):
        config("--listen=::1", "--listen=192.168.1.5")
    assert config("--listen=127.0.0.1").hosts == ("127.0.0.1",)
    assert config("--listen=localhost", "--listen=[::1]").hosts == ("localhost", "[::1]")
    cfg = config("--listen=0.0.0.0", "--allow-non-loopback", "--allow-origin=https://lab.example/")
    assert cfg.hosts == ("0.0.0.0",) and cfg.allowed_origins == ("https://lab.example",)


def test_non_loopback_refusal_exits_with_a_message(capsys) -> None:
    from notebook_kernels_mixer.cli import main

    assert main(["--listen=0.0.0.0"]) == 2
    assert "non-loopback" in capsys.readouterr().err


def test_the_answer_cap_is_64_mib_unless_the_flag_says_otherwise(capsys) -> None:
    assert {b.max_answer_bytes for b in config("--remote-url=http://h").backends} == {64 << 20}
    cfg = config("--remote-url=http://h", "--max-backend-answer=1048576")
    assert {b.max_answer_bytes for b in cfg.backends} == {1 << 20}
    with pytest.raises(ConfigError, match="max-backend-answer"):
        config("--max-backend-answer=0")
