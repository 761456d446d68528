"""Backends from TOML files (``mixer --config FILE``), combined with the seed flags.

A file declares any number of places to run kernels; ``examples/mixer.toml``
documents every key. The flags of SPEC §2 keep working and describe two backends,
``local`` (``--jupyter-port``, ``--jupyter-token``) and ``remote`` (``--remote-url``
or ``--mixer-project``/``--mixer-region``). With one or more files, the precedence is:

1. Backends come from the files, in file order (``--config`` may be repeated).
2. The local backend (the one that receives everything the mixer does not handle
   itself) is the one marked ``local = true``, else the one named ``local``; when the
   files have neither, the seed ``local`` backend is added, exactly as without a file.
3. Seed flags given on the command line override fields of the files' backends:
   ``--jupyter-port`` the url and ``--jupyter-token`` the token of the local backend;
   ``--remote-url`` (or project/region) the url of the backend named ``remote``, or
   adds the seed ``remote`` backend when no file declares one.
   ``--gce-metadata-override-ip`` applies to Google-auth backends that set none.
4. The default backend is the one marked ``default = true`` (at most one in all
   files), else the first backend that is not the local one, else the local one.
5. ``[mixer]`` settings: a flag given on the command line wins over the file, the file
   wins over the flag's default. The token clients must present is ``--jupyter-token``
   if given, else ``[mixer] token_env``/``token_file``, else the local backend's token.

Tokens are read from an environment variable (``token_env``) or a file
(``token_file``), never written in the file or on the command line. Every error
names the file and the entry, and the CLI exits with status 2.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from notebook_kernels_mixer.config import (
    BackendConfig,
    ConfigError,
    MixerConfig,
    parse_duration,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

BACKEND_KEYS = (
    "name", "display_suffix", "url", "auth", "token_env", "token_file",
    "request_timeout", "list_timeout", "default", "local", "sessions", "gce_metadata_ip",
)  # fmt: skip
MIXER_KEYS = ("port", "token_env", "token_file", "external_hostname", "retention", "state_file",
              "max_backend_answer")
TOP_KEYS = ("mixer", "backends")


class ConfigFileError(ConfigError):
    """A configuration file is invalid; the message names the file and the entry."""


@dataclass(frozen=True)
class FileBackend:
    """One ``[[backends]]`` entry, validated; timeouts ``None`` when not given."""

    config: BackendConfig
    request_timeout: float | None
    list_timeout: float | None
    default: bool
    local: bool
    where: str  # "FILE: backend 'name'" for messages


@dataclass(frozen=True)
class FileSettings:
    """What the files say, before the flags are combined with it."""

    backends: tuple[FileBackend, ...]
    port: int | None = None
    token: str | None = None
    external_hostname: str | None = None
    retention: float | None = None
    state_file: str | None = None
    max_backend_answer: int | None = None


# -- reading -----------------------------------------------------------------------------
def load_files(paths: Sequence[str | os.PathLike[str]],
               environ: Mapping[str, str] | None = None) -> FileSettings:
    """Read and validate every file; backends of all files are combined."""
    env = os.environ if environ is None else environ
    backends: list[FileBackend] = []
    port = token = external_hostname = retention = state_file = max_answer = None
    for raw in paths:
        path = Path(raw).expanduser()
        data = _read_toml(path)
        _check_keys(data, TOP_KEYS, f"{path}", "top level")
        mixer = data.get("mixer", {})
        if not isinstance(mixer, dict):
            raise ConfigFileError(f"{path}: [mixer] must be a table")
        _check_keys(mixer, MIXER_KEYS, f"{path}", "[mixer]")
        if "port" in mixer:
            port = _port(mixer["port"], f"{path}: [mixer]")
        if "external_hostname" in mixer:
            external_hostname = _string(mixer, "external_hostname", f"{path}: [mixer]")
        if "retention" in mixer:
            retention = _duration(mixer, "retention", f"{path}: [mixer]")
        if "state_file" in mixer:
            state_file = str(path.parent / Path(_string(mixer, "state_file", f"{path}: [mixer]"))
                             .expanduser()) if mixer["state_file"] != ":memory:" else ":memory:"
        if "max_backend_answer" in mixer:
            max_answer = _positive_int(mixer, "max_backend_answer", f"{path}: [mixer]")
        if "token_env" in mixer or "token_file" in mixer:
            token = _read_token(mixer, path, f"{path}: [mixer]", env)
        entries = data.get("backends", [])
        if not isinstance(entries, list):
            raise ConfigFileError(
                f"{path}: 'backends' must be an array of tables ([[backends]] entries)"
            )
        for index, entry in enumerate(entries, 1):
            backends.append(_backend(entry, index, path, env))
    _check_unique(backends)
    return FileSettings(tuple(backends), port, token, external_hostname, retention, state_file,
                        max_answer)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: invalid TOML: {exc}") from None


def _check_keys(table: Mapping[str, Any], known: Iterable[str], where: str, what: str) -> None:
    known = tuple(known)
    for key in table:
        if key in known:
            continue
        if key == "token":
            raise ConfigFileError(
                f"{where}: {what}: a token is never written in the configuration; "
                "use token_env (an environment variable) or token_file (a file) instead"
            )
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f" (known keys: {', '.join(known)})"
        raise ConfigFileError(f"{where}: {what}: unknown key {key!r}{hint}")


def _backend(entry: Any, index: int, path: Path, env: Mapping[str, str]) -> FileBackend:
    """Map one ``[[backends]]`` table to a BackendConfig, which checks the values."""
    where = f"{path}: [[backends]] entry {index}"
    if not isinstance(entry, dict):
        raise ConfigFileError(f"{where}: must be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigFileError(f"{where}: 'name' is required (a string matching [a-z0-9_]+)")
    where = f"{path}: backend {name!r} (entry {index})"
    _check_keys(entry, BACKEND_KEYS, where, "")
    if "url" not in entry:
        raise ConfigFileError(f"{where}: 'url' is required (http:// or https://)")
    auth = entry.get("auth", "none")
    if auth != "token" and ("token_env" in entry or "token_file" in entry):
        raise ConfigFileError(f"{where}: token_env/token_file need auth = \"token\" (auth is {auth!r})")
    values: dict[str, Any] = {
        key: entry[key] for key in ("url", "auth", "sessions", "gce_metadata_ip") if key in entry
    }
    values["display_suffix"] = entry.get("display_suffix", f" ({name})")
    if auth == "token":
        values["token"] = _read_token(entry, path, where, env)
    timeouts = {key: _duration(entry, key, where) for key in ("request_timeout", "list_timeout")}
    values.update({key: value for key, value in timeouts.items() if value is not None})
    try:
        config = BackendConfig(name=name, **values)
    except ConfigError as exc:
        raise ConfigFileError(f"{where}: {exc.problem}") from None
    return FileBackend(
        config=config,
        request_timeout=timeouts["request_timeout"],
        list_timeout=timeouts["list_timeout"],
        default=_bool(entry, "default", where, False),
        local=_bool(entry, "local", where, False),
        where=where,
    )


def _read_token(table: Mapping[str, Any], path: Path, where: str, env: Mapping[str, str]) -> str:
    has_env, has_file = "token_env" in table, "token_file" in table
    if has_env and has_file:
        raise ConfigFileError(f"{where}: give token_env or token_file, not both")
    if not has_env and not has_file:
        raise ConfigFileError(
            f"{where}: auth \"token\" needs token_env (an environment variable) or "
            "token_file (a file) that holds the token"
        )
    if has_env:
        var = _string(table, "token_env", where)
        value = env.get(var, "").strip()
        if not value:
            raise ConfigFileError(f"{where}: environment variable {var!r} (token_env) is not set or empty")
        return value
    name = _string(table, "token_file", where)
    # Relative paths are relative to the configuration file, not to the working directory.
    token_path = (path.parent / Path(name).expanduser()).resolve()
    try:
        value = token_path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigFileError(f"{where}: token_file {str(token_path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigFileError(f"{where}: token_file {str(token_path)!r} cannot be read: {reason}") from None
    if not value:
        raise ConfigFileError(f"{where}: token_file {str(token_path)!r} is empty")
    return value


def _string(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigFileError(f"{where}: {key} must be a non-empty string")
    return value


def _bool(table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigFileError(f"{where}: {key} must be true or false")
    return value


def _duration(table: Mapping[str, Any], key: str, where: str) -> float | None:
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigFileError(f"{where}: {key} must be seconds (a number) or a duration like \"10s\"")
    try:
        return parse_duration(str(value))
    except ConfigError as exc:
        raise ConfigFileError(f"{where}: {key}: {exc}") from None


def _positive_int(table: Mapping[str, Any], key: str, where: str) -> int:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigFileError(f"{where}: {key} must be a positive integer (bytes)")
    return value


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigFileError(f"{where}: port must be an integer between 0 and 65535")
    return value


def _check_unique(backends: Sequence[FileBackend]) -> None:
    seen: dict[str, FileBackend] = {}
    for backend in backends:
        first = seen.get(backend.config.name)
        if first is not None:
            raise ConfigFileError(
                f"{backend.where}: duplicate backend name {backend.config.name!r} "
                f"(already declared at {first.where})"
            )
        seen[backend.config.name] = backend
    for role in ("default", "local"):
        marked = [b for b in backends if getattr(b, role)]
        if len(marked) > 1:
            raise ConfigFileError(
                f"{marked[1].where}: more than one backend has {role} = true "
                f"(also {marked[0].where}); mark exactly one"
            )


# -- combining with the flags --------------------------------------------------------------
def combine(files: FileSettings, seed: MixerConfig, given: set[str]) -> MixerConfig:
    """The files' backends and settings combined with the seed flags (module docstring)."""
    seed_backends = {b.name: b for b in seed.backends}
    seed_local = seed_backends["local"]
    seed_remote = seed_backends.get("remote")
    seed_gce = seed_remote.gce_metadata_ip if seed_remote else None
    gce_flag = "gce_metadata_override_ip" in given
    out: list[BackendConfig] = []
    local_name = next((b.config.name for b in files.backends if b.local), None)
    if local_name is None and any(b.config.name == "local" for b in files.backends):
        local_name = "local"
    default_name = next((b.config.name for b in files.backends if b.default), None)
    for fb in files.backends:
        config = fb.config
        timeout = fb.request_timeout or seed_local.request_timeout
        list_timeout = fb.list_timeout or min(seed_local.list_timeout, timeout)
        config = replace(config, request_timeout=timeout, list_timeout=list_timeout)
        if config.name == local_name:
            if "jupyter_port" in given:
                config = replace(config, url=seed_local.url)
            if "jupyter_token" in given:
                config = replace(config, auth="token", token=seed_local.token)
        if config.name == "remote" and seed_remote is not None:
            config = replace(config, url=seed_remote.url)
        if gce_flag and config.auth in ("gcloud", "google-adc") and config.gce_metadata_ip is None:
            config = replace(config, gce_metadata_ip=seed_gce)
        out.append(config)
    names = {b.name for b in out}
    if local_name is None:
        local_name = "local"
        out.insert(0, seed_local)
    if seed_remote is not None and "remote" not in names:
        out.append(seed_remote)
    if default_name is None:
        default_name = next((b.name for b in out if b.name != local_name), local_name)
    # [mixer] max_backend_answer caps every backend's answers, unless the flag is given.
    cap = _flag_or_file("max_backend_answer", seed_local.max_answer_bytes,
                        files.max_backend_answer, given)
    out = [replace(b, max_answer_bytes=cap) for b in out]
    local = next(b for b in out if b.name == local_name)
    if "jupyter_token" in given:
        token = seed.token
    elif files.token is not None:
        token = files.token
    else:
        token = local.token if local.auth == "token" else None
    return replace(
        seed,
        backends=tuple(out),
        default_backend=default_name,
        local_backend=local_name,
        port=seed.port if "port" in given or files.port is None else files.port,
        token=token,
        external_hostname=_flag_or_file("external_hostname", seed.external_hostname,
                                        files.external_hostname, given),
        retention=_flag_or_file("retention", seed.retention, files.retention, given),
        state_file=_flag_or_file("state_file", seed.state_file, files.state_file, given),
    )


def _flag_or_file(key: str, flag: Any, file: Any, given: set[str]) -> Any:
    """A flag given on the command line wins over the file; the file over a default."""
    return flag if key in given or file is None else file


def apply_files(paths: Sequence[str | os.PathLike[str]], seed: MixerConfig, given: set[str],
                environ: Mapping[str, str] | None = None) -> MixerConfig:
    """Read ``paths`` and combine them with the seed configuration built from the flags."""
    return combine(load_files(paths, environ), seed, given)
