"""Configuration as frozen values, built once (by the CLI) and passed down.

Nothing here reads global state at import time, so tests can build several mixers,
each with its own configuration, in one process.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from notebook_kernels_mixer.backends import kinds

#: The values of a backend's ``auth`` (``backends.kinds``: none, token, gcloud, google-adc).
AUTH_KINDS = tuple(kinds.AUTHS)
#: Who keeps a backend's notebook sessions: "backend" (its own /api/sessions,
#: jupyter_server), "mixer" (the mixer, over the backend's kernels API: Kernel and
#: Enterprise Gateway, whose sessions API is missing), or "auto" (its kind's, else ask
#: it once; see ``backends.kinds.sessions_mode`` and resources/session_stores.py).
SESSIONS_MODES = kinds.SESSIONS_MODES
BACKEND_NAME_RE = re.compile(r"^[a-z0-9_]+$")
LOOPBACK_HOSTS = ("::1", "127.0.0.1")
#: Default cap of one REST answer from a backend (``--max-backend-answer``).
MAX_BACKEND_ANSWER = 64 * 1024 * 1024
#: A carry's time budget: under jupyter_server's GatewayClient.request_timeout (42 s), so
#: that a front's kernel change that waits for it is not cut off.
CARRY_BUDGET = 30.0
#: Serialized bytes one carry moves at most (the largest values stay behind).
CARRY_CAP = 1 << 30

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why.

    ``problem`` is the message without the backend it concerns, for callers that say
    where the backend was declared (a file and its entry) instead.
    """

    def __init__(self, problem: str, *, backend: str | None = None) -> None:
        super().__init__(f"backend {backend!r}: {problem}" if backend else problem)
        self.problem = problem


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``10s``, ``1m30s``, ``250ms``) or plain seconds.

    The original takes Go durations for ``--context_request_timeout``; accepting the
    same spelling keeps existing command lines working.
    """
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(value) or not value:
            raise ConfigError(
                f"invalid duration {text!r}: use e.g. 10s, 1m30s, 500ms or plain seconds"
            ) from None
    if seconds <= 0:
        raise ConfigError(f"invalid duration {text!r}: must be positive")
    return seconds


@dataclass(frozen=True)
class BackendConfig:
    """One place to run kernels: a Jupyter-API server and how to reach it."""

    name: str
    display_suffix: str
    url: str
    auth: str = "none"
    #: Secret for ``auth = "token"``; never printed (``repr=False``).
    token: str | None = field(default=None, repr=False)
    #: Limit for one request that targets this backend (kernel start, delete, …).
    request_timeout: float = 10.0
    #: Limit for this backend's part of a merged listing; a slower backend is left
    #: out of that answer (and filled in later) instead of holding every user up.
    list_timeout: float = 2.5
    #: Metadata server address for Google credentials (``--gce-metadata-override-ip``).
    gce_metadata_ip: str | None = None
    #: Who keeps this backend's sessions (one of SESSIONS_MODES).
    sessions: str = kinds.AUTO
    #: Cap of one REST answer (listing, model, kernelspec resource, error) from this
    #: backend, in bytes: a larger answer is a 502 (``--max-backend-answer``).
    max_answer_bytes: int = MAX_BACKEND_ANSWER
    #: Culling (SPEC §7, jupyter_server's MappingKernelManager): a kernel idle for more
    #: than this many seconds is shut down (0: never), checked every ``cull_interval``
    #: seconds; busy ones too with ``cull_busy``, ones with clients connected too with
    #: ``cull_connected`` (``culling.py``).
    cull_idle_timeout: float = 0.0
    cull_interval: float = 300.0
    cull_connected: bool = False
    cull_busy: bool = False

    def __post_init__(self) -> None:
        """The one place a backend's values are checked (flags and files alike)."""
        if not isinstance(self.name, str) or not BACKEND_NAME_RE.match(self.name):
            raise ConfigError(
                f"name {self.name!r} must match [a-z0-9_]+ (it becomes the kernelspec "
                "prefix, e.g. NAME-python3)", backend=str(self.name)
            )
        for key in ("display_suffix", "url"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"{key} must be a string", backend=self.name)
        if self.gce_metadata_ip is not None and not isinstance(self.gce_metadata_ip, str):
            raise ConfigError("gce_metadata_ip must be a string", backend=self.name)
        if self.auth not in AUTH_KINDS:
            raise ConfigError(
                f"unknown auth kind {self.auth!r} (one of {', '.join(AUTH_KINDS)})", backend=self.name
            )
        if kinds.AUTHS[self.auth].token and not self.token:
            raise ConfigError(f"auth {self.auth!r} needs a token", backend=self.name)
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", self.url):
            raise ConfigError(f"invalid url {self.url!r} (http or https)", backend=self.name)
        if self.request_timeout <= 0 or self.list_timeout <= 0:
            raise ConfigError("timeouts must be positive", backend=self.name)
        if (isinstance(self.max_answer_bytes, bool) or not isinstance(self.max_answer_bytes, int)
                or self.max_answer_bytes <= 0):
            raise ConfigError("the answer cap (--max-backend-answer) must be a positive "
                              "number of bytes", backend=self.name)
        self._check_culling()
        if self.sessions not in SESSIONS_MODES:
            raise ConfigError(
                f"unknown sessions {self.sessions!r} (one of {', '.join(SESSIONS_MODES)})",
                backend=self.name,
            )


    def _check_culling(self) -> None:
        for key in ("cull_idle_timeout", "cull_interval"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key} must be a number of seconds", backend=self.name)
        if self.cull_idle_timeout < 0 or self.cull_interval <= 0:
            raise ConfigError("cull_idle_timeout must not be negative (0: no culling) and "
                              "cull_interval must be positive", backend=self.name)
        for key in ("cull_connected", "cull_busy"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false", backend=self.name)


@dataclass(frozen=True)
class LogConfig:
    request_headers: bool = False
    request_responses: bool = False
    response_bodies: bool = False


@dataclass(frozen=True)
class MixerConfig:
    """Everything the running mixer needs; see README "Flags" for each value."""

    backends: tuple[BackendConfig, ...]
    #: Backend whose default kernelspec becomes the merged default while it is up.
    default_backend: str
    #: Backend that receives every request the mixer does not handle itself.
    local_backend: str
    port: int = 8081
    hosts: tuple[str, ...] = LOOPBACK_HOSTS
    #: Listening on a non-loopback address exposes the user's kernels (and cloud
    #: credentials) to the network; it takes this explicit opt-in (SECURITY.md).
    allow_non_loopback: bool = False
    #: Token clients must present; ``None`` admits everyone (loopback only!).
    token: str | None = field(default=None, repr=False)
    external_hostname: str | None = None
    #: Extra websocket Origins (scheme://host[:port]) admitted besides loopback ones.
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    #: How long merged kernelspecs are served without asking the backends again.
    kernelspecs_ttl: float = 2.0
    #: How long a backend that cannot answer still contributes its last-known kernels
    #: and sessions to merged listings (SPEC §4).
    retention: float = 600.0
    #: A merged kernels/sessions listing that completed less than this long ago is
    #: answered again (changes made through the mixer end that at once).
    listing_window: float = 0.5
    #: SQLite file of the state a restart must not forget; ``:memory:`` keeps nothing,
    #: ``None`` is one file per port in Jupyter's runtime directory.
    state_file: str | None = None
    #: Carry a notebook's variables when its kernel changes backend (SPEC §7), within
    #: ``carry_budget`` seconds and ``carry_cap`` serialized bytes.
    carry_variables: bool = False
    carry_budget: float = CARRY_BUDGET
    carry_cap: int = CARRY_CAP
    log: LogConfig = LogConfig()

    def __post_init__(self) -> None:
        names = [b.name for b in self.backends]
        if not names:
            raise ConfigError("no backends configured")
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"duplicate backend names: {', '.join(dupes)}")
        for role, name in (("default", self.default_backend), ("local", self.local_backend)):
            if name not in names:
                raise ConfigError(f"{role} backend {name!r} is not configured")
        exposed = [h for h in self.hosts if not is_loopback(h)]
        if exposed and not self.allow_non_loopback:
            raise ConfigError(
                f"refusing to listen on non-loopback address {', '.join(exposed)}: the mixer is "
                "not an access-control layer (SECURITY.md); add --allow-non-loopback to do it anyway"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"invalid port {self.port}")
        if self.retention < 0 or self.listing_window < 0:
            raise ConfigError("retention and listing window must not be negative")
        if self.carry_budget <= 0 or self.carry_cap < 0:
            raise ConfigError("the carry budget must be positive and its cap not negative")
