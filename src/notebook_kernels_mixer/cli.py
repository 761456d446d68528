"""The ``mixer`` command: flags (compatible with the Go original) → MixerConfig → run.

``mixer [flags]`` runs the mixer; ``mixer lab`` starts the whole topology;
``mixer status`` prints the status of a running mixer. Flags may be spelt with one
dash, as Go's flag package allows (``-port=9991``), so old command lines keep working.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sys
from collections.abc import Sequence

from notebook_kernels_mixer import __version__
from notebook_kernels_mixer.config import (
    LOOPBACK_HOSTS,
    MAX_BACKEND_ANSWER,
    BackendConfig,
    ConfigError,
    LogConfig,
    MixerConfig,
    parse_duration,
)

log = logging.getLogger("notebook_kernels_mixer")


def _flag(parser: argparse.ArgumentParser, name: str, *aliases: str, **kwargs: object) -> None:
    if parser.argument_default is argparse.SUPPRESS:
        kwargs.pop("default", None)
    names = [f"--{name}", f"-{name}"]
    for alias in aliases:
        names += [f"--{alias}", f"-{alias}"]
    parser.add_argument(*names, **kwargs)  # type: ignore[arg-type]


def mixer_parser(*, defaults: bool = True) -> argparse.ArgumentParser:
    """The flags; ``defaults=False`` leaves out every flag not given (``given_options``)."""
    parser = argparse.ArgumentParser(
        prog="mixer",
        argument_default=None if defaults else argparse.SUPPRESS,
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
    _flag(parser, "log-level", default="info", choices=["debug", "info", "warning", "error"],
          help="log level")


def _duration_or_zero(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0s") else parse_duration(text)


def given_options(argv: Sequence[str]) -> set[str]:
    """The ``dest`` of every flag actually given in ``argv`` (not defaulted): given
    flags win over config files, defaults do not."""
    namespace, _ = mixer_parser(defaults=False).parse_known_args(list(argv))
    return set(vars(namespace))


def remote_url(args: argparse.Namespace) -> str | None:
    if args.remote_url:
        return str(args.remote_url)
    if args.mixer_project and args.mixer_region:
        return f"https://{args.mixer_project}-dot-{args.mixer_region}.{args.mixer_host}"
    return None


def google_auth_kind() -> str:
    """Like the original, use gcloud when it is installed; else google-auth's ADC."""
    return "gcloud" if shutil.which("gcloud") else "google-adc"


def config_from_args(args: argparse.Namespace) -> MixerConfig:
    timeout = parse_duration(args.context_request_timeout)
    list_timeout = min(parse_duration(args.list_timeout), timeout)
    local = BackendConfig(
        name="local",
        display_suffix=" (Local)",
        url=f"http://localhost:{args.jupyter_port}/",
        auth="token" if args.jupyter_token else "none",
        token=args.jupyter_token,
        request_timeout=timeout,
        list_timeout=list_timeout,
        sessions="backend",  # a jupyter_server keeps its own sessions
        max_answer_bytes=args.max_backend_answer,
    )
    backends = [local]
    url = remote_url(args)
    if url is not None:
        backends.append(
            BackendConfig(
                name="remote",
                display_suffix=" (Remote)",
                url=url,
                auth=google_auth_kind(),
                request_timeout=timeout,
                list_timeout=list_timeout,
                gce_metadata_ip=args.gce_metadata_override_ip,
                max_answer_bytes=args.max_backend_answer,
            )
        )
    return MixerConfig(
        backends=tuple(backends),
        default_backend=backends[-1].name,
        local_backend="local",
        port=args.port,
        hosts=tuple(args.listen) if args.listen else LOOPBACK_HOSTS,
        allow_non_loopback=args.allow_non_loopback,
        allowed_origins=tuple(o.rstrip("/") for o in args.allow_origin),
        token=args.jupyter_token,
        external_hostname=args.external_hostname,
        retention=_duration_or_zero(args.retention),
        listing_window=_duration_or_zero(args.listing_window),
        state_file=args.state_file,
        log=LogConfig(
            request_headers=args.log_all_request_headers,
            request_responses=args.log_all_request_responses,
            response_bodies=args.log_all_response_bodies,
        ),
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "lab":
        from notebook_kernels_mixer.lab import main as lab_main

        return lab_main(argv[1:])
    if argv and argv[0] == "status":
        from notebook_kernels_mixer.status_cli import main as status_main

        return status_main(argv[1:])
    parser = mixer_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = config_from_args(args)
        if args.config:
            from notebook_kernels_mixer.config_file import apply_files

            config = apply_files(args.config, config, given_options(argv))
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
