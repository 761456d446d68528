"""Backend kinds (backends/kinds.py): each kind's auth kinds and their credentials, who
keeps its sessions, its config-file keys; and every place that depends on a kind asks
there (config checks, the factory, the config file, the flags' seed backends, the
session store)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from notebook_kernels_mixer.backends import build_backend, kinds
from notebook_kernels_mixer.backends.credentials import (
    Credentials,
    GcloudToken,
    GoogleAdcToken,
    StaticToken,
)
from notebook_kernels_mixer.cli import config_from_argv
from notebook_kernels_mixer.config import AUTH_KINDS, SESSIONS_MODES, BackendConfig, ConfigError
from notebook_kernels_mixer.config_file import BACKEND_KEYS, MIXER_KEYS, ConfigFileError, load_files


def config(auth: str = "none", sessions: str = "auto") -> BackendConfig:
    return BackendConfig("b", "", "http://127.0.0.1:1/", auth=auth, sessions=sessions,
                         token="t" if kinds.AUTHS[auth].token else None)


def test_the_three_kinds_and_their_auth_kinds() -> None:
    table = {k.name: ([a.name for a in k.auths], k.sessions) for k in kinds.KINDS}
    assert table == {
        "jupyter": (["none", "token"], "backend"),
        "gateway": (["none", "token"], "mixer"),
        "google": (["gcloud", "google-adc"], "backend"),
    }
    # what the configuration accepts is what the kinds say, in this order
    assert AUTH_KINDS == ("none", "token", "gcloud", "google-adc")
    assert SESSIONS_MODES == ("auto", "backend", "mixer")


CREDENTIALS = {"none": Credentials, "token": StaticToken, "gcloud": GcloudToken,
               "google-adc": GoogleAdcToken}


@pytest.mark.parametrize("auth", AUTH_KINDS)
async def test_each_auth_kind_makes_its_credentials(auth: str) -> None:
    backend = build_backend(config(auth))
    try:
        assert type(backend.credentials) is CREDENTIALS[auth]
        assert backend.credentials.kind == auth  # what /mixer/api/status shows
    finally:
        await backend.close()


async def test_credentials_carry_the_token_and_the_metadata_server() -> None:
    token = build_backend(config("token"))
    assert await token.credentials.headers() == {"Authorization": "token t"}
    await token.close()
    google = build_backend(BackendConfig("g", "", "http://127.0.0.1:1/", auth="gcloud",
                                         gce_metadata_ip="169.254.1.2"))
    assert isinstance(google.credentials, GcloudToken)
    assert google.credentials._env["GCE_METADATA_HOST"] == "169.254.1.2"
    await google.close()


@pytest.mark.parametrize(
    ("auth", "sessions", "mode"),
    [("gcloud", "auto", "backend"), ("google-adc", "auto", "backend"),  # only Google's service
     ("token", "auto", "auto"), ("none", "auto", "auto"),  # a jupyter_server or a gateway: ask
     ("token", "mixer", "mixer"), ("gcloud", "mixer", "mixer"), ("none", "backend", "backend")],
)
def test_who_keeps_the_sessions(auth: str, sessions: str, mode: str) -> None:
    assert kinds.sessions_mode(config(auth, sessions)) == mode


def test_an_auth_kind_narrows_the_kinds_down() -> None:
    assert kinds.kinds_of("token") == (kinds.JUPYTER, kinds.GATEWAY)
    assert kinds.kinds_of("gcloud") == (kinds.GOOGLE,)
    assert kinds.kinds_of("kerberos") == ()


def test_a_kind_picks_its_auth_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kinds.JUPYTER.auth_for("secret") == "token"
    assert kinds.JUPYTER.auth_for(None) == kinds.JUPYTER.auth_for("") == "none"
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/gcloud" if name == "gcloud" else None)
    assert kinds.GOOGLE.auth_for() == "gcloud"
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert kinds.GOOGLE.auth_for() == "google-adc"


def test_an_auth_kind_that_sends_a_token_needs_one() -> None:
    for auth in AUTH_KINDS:
        values = {"name": "b", "display_suffix": "", "url": "http://127.0.0.1:1/", "auth": auth}
        if kinds.AUTHS[auth].token:
            with pytest.raises(ConfigError, match=f"auth '{auth}' needs a token"):
                BackendConfig(**values)  # type: ignore[arg-type]
        else:
            BackendConfig(**values)  # type: ignore[arg-type]


def test_the_config_file_keys_of_auth_kinds(tmp_path: Path) -> None:
    assert kinds.AUTH_KEYS == kinds.TOKEN_KEYS == ("token_env", "token_file")
    assert set(kinds.AUTH_KEYS) <= set(BACKEND_KEYS)
    assert set(kinds.TOKEN_KEYS) <= set(MIXER_KEYS)  # the client token is read the same way
    path = tmp_path / "m.toml"
    (tmp_path / "kg.token").write_text("kg-secret\n")
    entry = '[[backends]]\nname = "kg"\nurl = "http://127.0.0.1:1/"\ntoken_file = "kg.token"\n'
    path.write_text(entry + 'auth = "token"\n')
    assert load_files([path]).backends[0].config.token == "kg-secret"
    for auth in ("none", "gcloud", "google-adc"):  # the token keys belong to "token" alone
        path.write_text(entry + f'auth = "{auth}"\n')
        with pytest.raises(ConfigFileError, match=f'need auth = "token" \\(auth is \'{auth}\'\\)'):
            load_files([path])


def test_the_metadata_server_flag_applies_to_the_google_backends_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(textwrap.dedent("""
        [[backends]]
        name = "gc"
        url = "https://a.example.com/"
        auth = "gcloud"

        [[backends]]
        name = "adc"
        url = "https://b.example.com/"
        auth = "google-adc"
        gce_metadata_ip = "10.0.0.9"

        [[backends]]
        name = "kg"
        url = "http://127.0.0.1:1/"
    """))
    cfg = config_from_argv([f"--config={path}", "--gce-metadata-override-ip=10.0.0.1"])
    ips = {b.name: b.gce_metadata_ip for b in cfg.backends}
    assert ips == {"local": None, "gc": "10.0.0.1", "adc": "10.0.0.9", "kg": None}


@pytest.mark.parametrize("first", ["notebook_kernels_mixer.config", "notebook_kernels_mixer.backends",
                                   "notebook_kernels_mixer.backends.kinds"])
def test_config_and_kinds_import_in_either_order(first: str) -> None:
    # config imports backends.kinds; nothing under backends/ may import config at run time
    code = f"import {first}; import notebook_kernels_mixer.cli"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
