"""Backends and settings from TOML files (``mixer --config FILE``), read and checked.

A file declares any number of places to run kernels (``[[backends]]``) and the mixer's
own settings (``[mixer]``); ``examples/mixer.toml`` documents every key. The keys of a
backend that belong to one auth kind (``token_env``/``token_file``) are declared in
``backends.kinds``. ``cli.config_from_flags`` lays the files over the flags'
defaults, and the flags given on the command line over the files (the precedence is
there and in the README).

Tokens are read from an environment variable (``token_env``) or a file
(``token_file``), never written in the file or on the command line. Every error
names the file and the entry, and the CLI exits with status 2.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notebook_kernels_mixer.backends import kinds
from notebook_kernels_mixer.config import BackendConfig, ConfigError, parse_duration

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: The keys of a ``[[backends]]`` entry: those of every backend, and those of one auth
#: kind or another (``kinds.AUTH_KEYS``: token_env, token_file).
BACKEND_KEYS = (
    "name", "display_suffix", "url", "auth", *kinds.AUTH_KEYS,
    "request_timeout", "list_timeout", "default", "local", "sessions", "gce_metadata_ip",
    "cull_idle_timeout", "cull_interval", "cull_connected", "cull_busy",
)  # fmt: skip
MIXER_KEYS = ("port", "token_env", "token_file", "external_hostname", "retention", "state_file",
              "max_backend_answer", "carry_variables", "carry_budget", "carry_cap")
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
    """What the files say, before the flags are combined with it; a setting no file
    gives is None. The ``[mixer]`` settings are named like the flags that override
    them (``token``: the token clients present)."""

    backends: tuple[FileBackend, ...]
    port: int | None = None
    token: str | None = None
    external_hostname: str | None = None
    retention: float | None = None
    state_file: str | None = None
    max_backend_answer: int | None = None
    carry_variables: bool | None = None
    carry_budget: float | None = None
    carry_cap: int | None = None


# -- reading -----------------------------------------------------------------------------
def load_files(paths: Sequence[str | os.PathLike[str]],
               environ: Mapping[str, str] | None = None) -> FileSettings:
    """Read and validate every file; backends of all files are combined."""
    env = os.environ if environ is None else environ
    backends: list[FileBackend] = []
    port = token = external_hostname = retention = state_file = max_answer = None
    carry: dict[str, Any] = {}
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
        carry.update(_carry(mixer, f"{path}: [mixer]"))
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
                        max_answer, **carry)


def _carry(mixer: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The ``[mixer]`` carry settings a file gives (README: Switching keeps your variables)."""
    values: dict[str, Any] = {}
    if "carry_variables" in mixer:
        values["carry_variables"] = _bool(mixer, "carry_variables", where, False)
    if "carry_budget" in mixer:
        values["carry_budget"] = _duration(mixer, "carry_budget", where)
    if "carry_cap" in mixer:
        values["carry_cap"] = _positive_int(mixer, "carry_cap", where)
    return values


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
    auth = entry.get("auth", kinds.NONE.name)
    own = kinds.AUTHS.get(auth) if isinstance(auth, str) else None
    stray = [key for key in kinds.AUTH_KEYS if key in entry and (own is None or key not in own.keys)]
    if stray:  # e.g. a token for a backend that would not send it
        owner = next(a for a in kinds.AUTHS.values() if stray[0] in a.keys)
        raise ConfigFileError(
            f"{where}: {'/'.join(owner.keys)} need auth = \"{owner.name}\" (auth is {auth!r})"
        )
    values: dict[str, Any] = {
        key: entry[key] for key in ("url", "auth", "sessions", "gce_metadata_ip") if key in entry
    }
    values["display_suffix"] = entry.get("display_suffix", f" ({name})")
    if own is not None and own.token:
        values["token"] = _read_token(entry, path, where, env)
    timeouts = {key: _duration(entry, key, where) for key in ("request_timeout", "list_timeout")}
    values.update({key: value for key, value in timeouts.items() if value is not None})
    values.update(_culling(entry, where))
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


def _culling(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The culling keys an entry sets (``cull_idle_timeout = 0``: no culling)."""
    values: dict[str, Any] = {}
    if entry.get("cull_idle_timeout") in (0, "0", "0s") and not isinstance(
            entry.get("cull_idle_timeout"), bool):
        values["cull_idle_timeout"] = 0.0
    elif "cull_idle_timeout" in entry:
        values["cull_idle_timeout"] = _duration(entry, "cull_idle_timeout", where)
    if "cull_interval" in entry:
        values["cull_interval"] = _duration(entry, "cull_interval", where)
    for key in ("cull_connected", "cull_busy"):
        if key in entry:
            values[key] = _bool(entry, key, where, False)
    return values


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
