"""The ``mixer`` command: flags (compatible with the Go original) and config files →
MixerConfig → run.

``mixer [flags]`` runs the mixer; ``mixer lab`` starts the whole topology;
``mixer status`` prints the status of a running mixer (``mixer kernels``: its kernels).
Flags may be spelt with one dash, as Go's flag package allows (``-port=9991``), so old
command lines keep working.

The configuration is built in layers, each winning over the one before:
the flags' defaults < the ``--config`` files (``config_file``) < the flags given on the
command line. argv is parsed once (``parse_flags``); ``config_from_flags`` lays the
layers out (its docstring has the rules for backends).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from notebook_kernels_mixer import __version__
from notebook_kernels_mixer.backends import kinds
from notebook_kernels_mixer.config import (
    CARRY_BUDGET,
    CARRY_CAP,
    LOOPBACK_HOSTS,
    MAX_BACKEND_ANSWER,
    BackendConfig,
    ConfigError,
    LogConfig,
    MixerConfig,
    parse_duration,
)
from notebook_kernels_mixer.config_file import FileSettings, load_files

log = logging.getLogger("notebook_kernels_mixer")


def _flag(parser: argparse.ArgumentParser, name: str, *aliases: str, **kwargs: Any) -> None:
    names = [f"--{name}", f"-{name}"]
    for alias in aliases:
        names += [f"--{alias}", f"-{alias}"]
    parser.add_argument(*names, **kwargs)


def mixer_parser() -> argparse.ArgumentParser:
    """The flags, with the defaults ``--help`` and the README show (``parse_flags``
    tells the flags given from these defaults)."""
    parser = argparse.ArgumentParser(
        prog="mixer",
        description=(
            "Notebook Kernels Mixer: one Jupyter kernel API that merges the kernelspecs, "
            "kernels and sessions of a local Jupyter server with those of remote "
            "Jupyter-API servers. Point JupyterLab's GatewayClient.url at it. "
            "Subcommands: 'mixer lab' starts the whole topology, 'mixer status' shows a "
            "running mixer's backends."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _original_flags(parser)
    _mixer_flags(parser)
    parser.add_argument("--version", action="version", version=f"mixer {__version__}")
    return parser


def _original_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the Go original (SPEC §2), with its defaults."""
    _flag(parser, "port", type=int, default=8081,
          help="port to listen on; loopback addresses only ([::1] and 127.0.0.1)")
    _flag(parser, "mixer-project", default=None,
          help="Google Cloud project of the remote backend")
    _flag(parser, "mixer-region", default=None,
          help="Google Cloud region of the remote backend")
    _flag(parser, "mixer-host", default="kernels.googleusercontent.com",
          help="parent host: the remote is https://{project}-dot-{region}.{host}")
    _flag(parser, "remote-url", default=None,
          help="full URL of the remote backend (http or https); overrides project/region/host. "
               "It is sent Google credentials (gcloud, else ADC) like the original's remote; "
               "a server that wants its own token is declared in a --config file instead")
    _flag(parser, "jupyter-port", type=int, default=8082,
          help="port of the local Jupyter server on localhost")
    _flag(parser, "jupyter-token", default=None,
          help="token of the local Jupyter server; clients must present it to the mixer too "
               "(header 'token', 'Authorization: token …' or 'Bearer …', or ?token=)")
    _flag(parser, "external-hostname", default=None,
          help="host users actually connect to: requests with that Host are answered, and a "
               "websocket Origin with that host is admitted and dropped before forwarding "
               "to a backend")
    _flag(parser, "gce-metadata-override-ip", default=None,
          help="metadata server address used when fetching Google credentials")
    _flag(parser, "context_request_timeout", "context-request-timeout", default="10s",
          help="limit for one proxied non-websocket request (Go duration: 10s, 1m, 500ms)")
    _flag(parser, "log-all-request-headers", action="store_true",
          help="log every request's headers (tokens and cookies redacted)")
    _flag(parser, "log-all-request-responses", action="store_true",
          help="log every request with its status, backend and duration")
    _flag(parser, "log-all-response-bodies", action="store_true",
          help="log the body of every JSON answer (secrets redacted)")


def _mixer_flags(parser: argparse.ArgumentParser) -> None:
    """Flags the original does not have."""
    _flag(parser, "list-timeout", default="2.5s",
          help="how long a merged listing waits for one backend before using its last-known "
               "entries; at most --context_request_timeout")
    _flag(parser, "retention", default="10m",
          help="how long a backend that cannot answer still contributes its last-known "
               "kernels, sessions and kernelspecs to listings (clients drop what a listing "
               "omits)")
    _flag(parser, "listing-window", default="500ms",
          help="a merged kernels/sessions listing this recent is answered again (many tabs "
               "polling); changes made through the mixer are seen at once; 0 turns it off")
    _flag(parser, "state-file", default=None, metavar="PATH",
          help="SQLite file of what a restart must not forget (moved sessions, sessions "
               "kept for gateways, kernel owners); default: mixer-state-PORT.sqlite in "
               "Jupyter's runtime directory (none with --port 0); ':memory:' keeps nothing"
               "%(default).0s")
    _flag(parser, "max-backend-answer", type=int, default=MAX_BACKEND_ANSWER, metavar="BYTES",
          help="largest REST answer (listing, kernelspec resource, error) taken from a "
               "backend, in bytes; a larger one is answered 502")
    _flag(parser, "carry-variables", action="store_true",
          help="when a notebook's kernel changes backend, carry the old Python kernel's "
               "variables into the new one (data then leaves the machine it was on: "
               "README 'Switching keeps your variables')")
    _flag(parser, "carry-budget", default=f"{CARRY_BUDGET:g}s", metavar="DURATION",
          help="longest a carry may hold up a switch; the switch then completes with what "
               "arrived")
    _flag(parser, "carry-cap", type=int, default=CARRY_CAP, metavar="BYTES",
          help="most serialized bytes one carry moves; the largest values stay behind")
    _flag(parser, "config", action="append", default=[], metavar="FILE",
          help="TOML file declaring backends (see examples/mixer.toml); may be repeated. "
               "Flags given on the command line override the file (README: Config file)")
    _flag(parser, "listen", action="append", default=None, metavar="ADDRESS",
          help="address to listen on, repeatable (default: [::1] and 127.0.0.1); a "
               "non-loopback address also needs --allow-non-loopback%(default).0s")
    _flag(parser, "allow-non-loopback", action="store_true",
          help="allow --listen on addresses other than loopback: anyone who can reach "
               "them and knows the token controls your kernels (see SECURITY.md)")
    _flag(parser, "allow-origin", action="append", default=[], metavar="ORIGIN",
          help="also admit requests and websockets from this Origin (scheme://host[:port]), and requests "
               "whose Host is its host; repeatable")
    _flag(parser, "cull-idle-timeout", default="0", metavar="SECONDS",
          help="shut down a remote backend's kernels idle for longer than this (seconds or "
               "a duration like 1h), as jupyter_server's MappingKernelManager.cull_idle_timeout; "
               "0: never. Applies to every backend but the local one; a config file sets it "
               "per backend")
    _flag(parser, "cull-interval", default="300", metavar="SECONDS",
          help="how often remote backends' kernels are checked for culling")
    _flag(parser, "cull-connected", action="store_true",
          help="cull idle kernels even with clients connected (through the mixer or not)")
    _flag(parser, "cull-busy", action="store_true",
          help="cull kernels even while busy (a long computation counts as idle)")
    _flag(parser, "log-level", default="info", choices=["debug", "info", "warning", "error"],
          help="log level")


def _duration_or_zero(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0s") else parse_duration(text)


#: Flags whose text becomes a number of seconds. The parser keeps the text, so that
#: ``--help`` and the README show the default as it is written ("10s").
_SECONDS: dict[str, Callable[[str], float]] = {
    "context_request_timeout": parse_duration,
    "list_timeout": parse_duration,
    "retention": _duration_or_zero,
    "listing_window": _duration_or_zero,
    "cull_idle_timeout": _duration_or_zero,
    "cull_interval": parse_duration,
    "carry_budget": parse_duration,
}
#: The culling flags: they apply to every backend but the local one.
_CULLING = ("cull_idle_timeout", "cull_interval", "cull_connected", "cull_busy")


class _OnlyGiven(argparse.Namespace):
    """A namespace in which every flag not given stays out.

    argparse fills in a flag's default only when the namespace lacks the attribute;
    this one reads every missing public attribute as None, so it receives only what
    the command line says (an ``append`` flag starts from an empty list, as it would
    from a None default)."""

    def __getattr__(self, name: str) -> None:
        if name.startswith("_"):  # argparse's own bookkeeping attributes
            raise AttributeError(name)
        return None


@dataclass(frozen=True)
class Flags:
    """The command line, parsed once: the flags given, and the defaults of the others,
    each by its ``dest`` (durations in seconds)."""

    given: Mapping[str, Any]
    defaults: Mapping[str, Any]

    def __getitem__(self, dest: str) -> Any:
        return self.given[dest] if dest in self.given else self.defaults[dest]


def parse_flags(argv: Sequence[str]) -> Flags:
    """Parse ``argv`` (once; ``--help``, ``--version`` and bad flags exit, as argparse
    does). Durations are converted here, so a bad one is a ``ConfigError``."""
    parser = mixer_parser()
    given = vars(parser.parse_args(list(argv), namespace=_OnlyGiven()))
    defaults = vars(parser.parse_args([]))

    def seconds(layer: Mapping[str, Any]) -> dict[str, Any]:
        return {k: _SECONDS[k](v) if k in _SECONDS else v for k, v in layer.items()}

    return Flags(given=seconds(given), defaults=seconds(defaults))


def remote_url(flags: Flags) -> str | None:
    if flags["remote_url"]:
        return str(flags["remote_url"])
    if flags["mixer_project"] and flags["mixer_region"]:
        return f"https://{flags['mixer_project']}-dot-{flags['mixer_region']}.{flags['mixer_host']}"
    return None


@dataclass(frozen=True)
class Seed:
    """A backend the flags describe (SPEC §2: the local Jupyter server, the remote).

    ``given`` holds the fields of it that flags given on the command line set: they
    win over the fields of the file's backend that it stands for."""

    config: BackendConfig
    given: Mapping[str, Any]


def seeds(flags: Flags, cap: int) -> tuple[Seed, Seed | None]:
    """The local backend (a jupyter_server on localhost) and the remote one (Google's
    kernel service, if a url is given) of the flags."""
    given, token = flags.given, flags["jupyter_token"]
    timeout, list_timeout = _timeouts(flags)
    local = BackendConfig(
        name="local",
        display_suffix=" (Local)",
        url=f"http://localhost:{flags['jupyter_port']}/",
        auth=kinds.JUPYTER.auth_for(token),
        token=token,
        request_timeout=timeout,
        list_timeout=list_timeout,
        sessions=kinds.JUPYTER.sessions,
        max_answer_bytes=cap,
    )
    local_given: dict[str, Any] = {"url": local.url} if "jupyter_port" in given else {}
    if "jupyter_token" in given:
        local_given.update(auth=kinds.TOKEN.name, token=token)
    url = remote_url(flags)
    if url is None:
        return Seed(local, local_given), None
    remote = BackendConfig(
        name="remote",
        display_suffix=" (Remote)",
        url=url,
        auth=kinds.GOOGLE.auth_for(),
        request_timeout=timeout,
        list_timeout=list_timeout,
        gce_metadata_ip=flags["gce_metadata_override_ip"],
        max_answer_bytes=cap,
    )
    return Seed(local, local_given), Seed(remote, {"url": url})


def _timeouts(flags: Flags, request_timeout: float | None = None) -> tuple[float, float]:
    """A backend's (request, listing) timeouts: ``request_timeout``, else
    ``--context_request_timeout``; ``--list-timeout``, at most either."""
    timeout = flags["context_request_timeout"]
    listing = min(flags["list_timeout"], timeout)
    if request_timeout is None:
        return timeout, listing
    return request_timeout, min(listing, request_timeout)


def _file_layer(files: FileSettings) -> dict[str, Any]:
    """The ``[mixer]`` settings the files set, by the ``dest`` of the flag of the same
    name (``token``: the token clients present, which no flag alone sets)."""
    return {f.name: getattr(files, f.name) for f in fields(files)
            if f.name != "backends" and getattr(files, f.name) is not None}


def config_from_flags(flags: Flags, environ: Mapping[str, str] | None = None) -> MixerConfig:
    """The configuration: the flags' defaults < the ``--config`` files < the flags given.

    The mixer's settings are layered key by key (``port``, ``external_hostname``,
    ``retention``, ``state_file``, ``max_backend_answer``, which caps every backend;
    the token clients present is ``--jupyter-token``, else ``[mixer]``
    ``token_env``/``token_file``, else the local backend's token). The backends are
    the files' and the flags' (``backends``)."""
    paths = flags["config"]
    files = load_files(paths, environ) if paths else FileSettings(backends=())
    client_token = {"token": flags.given["jupyter_token"]} if "jupyter_token" in flags.given else {}
    values = {**flags.defaults, **_file_layer(files), **flags.given, **client_token}
    backends, local_name = _backends(files, flags, values["max_backend_answer"])
    default_name = next((fb.config.name for fb in files.backends if fb.default), None)
    if default_name is None:
        default_name = next((b.name for b in backends if b.name != local_name), local_name)
    local = next(b for b in backends if b.name == local_name)
    token = values.get("token")
    if token is None and kinds.AUTHS[local.auth].token:
        token = local.token
    return MixerConfig(
        backends=backends,
        default_backend=default_name,
        local_backend=local_name,
        port=values["port"],
        hosts=tuple(values["listen"]) if values["listen"] else LOOPBACK_HOSTS,
        allow_non_loopback=values["allow_non_loopback"],
        allowed_origins=tuple(o.rstrip("/") for o in values["allow_origin"]),
        token=token,
        external_hostname=values["external_hostname"],
        retention=values["retention"],
        listing_window=values["listing_window"],
        state_file=values["state_file"],
        carry_variables=values["carry_variables"],
        carry_budget=values["carry_budget"],
        carry_cap=values["carry_cap"],
        log=LogConfig(
            request_headers=values["log_all_request_headers"],
            request_responses=values["log_all_request_responses"],
            response_bodies=values["log_all_response_bodies"],
        ),
    )


def _backends(files: FileSettings, flags: Flags,
              cap: int) -> tuple[tuple[BackendConfig, ...], str]:
    """The backends (each answer capped at ``cap`` bytes), and the local one's name:

    1. Backends come from the files, in file order; a timeout a file's backend does
       not set is the flags' (``--context_request_timeout``, ``--list-timeout``).
    2. The local backend is the one marked ``local = true``, else the one named like
       the flags' local backend (``local``); with neither, the flags' local backend is
       added first, exactly as without a file.
    3. A seed flag given on the command line sets the fields of the file's backend its
       seed stands for (``Seed.given``): ``--jupyter-port``/``--jupyter-token`` the
       local backend's url/token, ``--remote-url`` (or project/region) the url of the
       backend named like the flags' remote (``remote``), which is added when no file
       declares one. ``--gce-metadata-override-ip`` applies to the backends whose auth
       fetches Google credentials and that set no ``gce_metadata_ip``.
    4. (``config_from_flags``) The default backend is the one marked ``default =
       true``, else the first backend that is not the local one, else the local one.
    5. The culling flags given (``--cull-idle-timeout``, ``--cull-interval``,
       ``--cull-connected``, ``--cull-busy``) set those of every backend but the local
       one (the remote ones, SPEC §7); a file sets them per backend.
    """
    local, remote = seeds(flags, cap)
    local_name = next((fb.config.name for fb in files.backends if fb.local), None)
    if local_name is None and any(fb.config.name == local.config.name for fb in files.backends):
        local_name = local.config.name
    stand_ins = [(local_name, local.given)]  # (the file's backend, what given flags set)
    if remote is not None:
        stand_ins.append((remote.config.name, remote.given))
    metadata_ip = flags.given.get("gce_metadata_override_ip")
    out: list[BackendConfig] = []
    for fb in files.backends:
        config = fb.config
        timeout, list_timeout = _timeouts(flags, fb.request_timeout)
        layer: dict[str, Any] = {"request_timeout": timeout, "max_answer_bytes": cap,
                                 "list_timeout": fb.list_timeout or list_timeout}
        for name, given in stand_ins:
            if config.name == name:
                layer.update(given)
        if (metadata_ip is not None and kinds.AUTHS[config.auth].metadata
                and config.gce_metadata_ip is None):
            layer["gce_metadata_ip"] = metadata_ip
        out.append(replace(config, **layer))
    names = {b.name for b in out}
    if local_name is None:
        local_name = local.config.name
        out.insert(0, local.config)
    if remote is not None and remote.config.name not in names:
        out.append(remote.config)
    # 5. the culling flags given
    culling = {key: flags.given[key] for key in _CULLING if key in flags.given}
    out = [b if b.name == local_name else replace(b, **culling) for b in out]
    return tuple(out), local_name


def config_from_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> MixerConfig:
    """``config_from_flags(parse_flags(argv))``."""
    return config_from_flags(parse_flags(argv), environ)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "lab":
        from notebook_kernels_mixer.lab import main as lab_main

        return lab_main(argv[1:])
    if argv and argv[0] in ("status", "kernels"):
        from notebook_kernels_mixer.status_cli import main as status_main

        # ``mixer kernels`` is ``mixer status --kernels``
        return status_main(argv[1:] if argv[0] == "status" else ["--kernels", *argv[1:]])
    try:
        flags = parse_flags(argv)  # a bad duration is a ConfigError
        setup_logging(flags["log_level"])
        config = config_from_flags(flags)
    except ConfigError as exc:
        print(f"mixer: {exc}", file=sys.stderr)
        return 2
    if len(config.backends) == 1:
        log.warning(
            "no remote backend configured (--mixer-project/--mixer-region, --remote-url "
            "or --config FILE, see examples/mixer.toml): running with local kernels only"
        )
    from notebook_kernels_mixer.app import serve

    with contextlib.suppress(KeyboardInterrupt):
        run(serve(config))
    return 0
