"""Backend kinds: the one place that says what each kind of backend is.

A *kind* is a kind of server the mixer runs kernels on:

======== ============================================ ============= ====================
kind     servers                                      auth kinds    notebook sessions
======== ============================================ ============= ====================
jupyter  jupyter_server (the local one, a remote one) none, token   its own (``backend``)
gateway  Jupyter Kernel or Enterprise Gateway         none, token   the mixer's (``mixer``)
google   Google's kernel service                      gcloud,       its own (``backend``)
                                                      google-adc
======== ============================================ ============= ====================

An *auth kind* (``Auth``, a backend's ``auth`` value) says how its requests are let
in: the credentials class that makes the headers (``backends.credentials``), the
config-file keys only it takes, whether it sends the backend's ``token`` and whether
the Google metadata server override applies to it.

A backend's configuration names its auth kind and, optionally, who keeps its
sessions (``sessions``); it does not name its kind. The auth kind narrows the kinds
down (``kinds_of``): ``gcloud`` can only be Google's service, whose sessions are its
own; ``token`` may be a jupyter_server or a gateway, so ``sessions = "auto"`` asks the
backend once (``resources.session_stores.AutoSessions``). ``sessions_mode`` says it.

Everything that depends on a kind asks here: ``config`` (which auth kinds and
sessions modes exist, whether a token is needed), ``factory`` (the credentials),
``config_file`` (the keys of a ``[[backends]]`` entry, where a token comes from,
``--gce-metadata-override-ip``), ``cli`` (the seed backends of the flags) and
``resources.session_stores.session_store``. Adding a kind is adding one ``Kind``
(and its ``Auth`` if it is reached another way) to ``KINDS`` below.

This module imports no configuration at run time: ``config`` imports it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from notebook_kernels_mixer.backends.credentials import (
    Credentials,
    GcloudToken,
    GoogleAdcToken,
    StaticToken,
)

if TYPE_CHECKING:
    from notebook_kernels_mixer.config import BackendConfig

#: ``sessions = "auto"``: ask the backend once who keeps its sessions, unless its auth
#: kind tells its kind (``sessions_mode``).
AUTO = "auto"
#: Where a ``[[backends]]`` entry takes the secret of an auth kind that sends a token:
#: an environment variable or a file (never the configuration itself).
TOKEN_KEYS = ("token_env", "token_file")


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Auth:
    """An auth kind: how a backend's requests are let in."""

    #: The value of a backend's ``auth`` (and of its credentials' ``kind``).
    name: str
    #: Makes the backend's credentials from its configuration.
    credentials: Callable[[BackendConfig], Credentials]
    #: Config-file keys only this auth kind takes; another auth kind's entry that has
    #: one is refused (a token given to a backend that would not send it).
    keys: tuple[str, ...] = ()
    #: Sends the backend's ``token``: it must have one (``token_env``/``token_file`` in
    #: a file, ``--jupyter-token`` for the local backend of the flags).
    token: bool = False
    #: Fetches Google credentials: ``gce_metadata_ip`` (``--gce-metadata-override-ip``)
    #: applies to it.
    metadata: bool = False
    #: Whether it can be used on this machine; asked when a kind picks an auth kind by
    #: itself (``Kind.auth_for``), e.g. gcloud only when it is installed.
    available: Callable[[], bool] = _always


@dataclass(frozen=True)
class Kind:
    """A kind of server the mixer runs kernels on."""

    name: str
    #: What servers it is, for messages and docs.
    servers: str
    #: The auth kinds it is reached with, preferred first (``auth_for``).
    auths: tuple[Auth, ...]
    #: Who keeps its notebook sessions: "backend" (its own ``/api/sessions``) or
    #: "mixer" (the mixer, over its kernels API).
    sessions: str

    def auth_for(self, token: str | None = None) -> str:
        """The auth kind to use when none is named (the backends of the flags): one
        that sends ``token`` if a token is given, else the first one available here
        that needs none (gcloud when it is installed, else Application Default
        Credentials, as the Go original does)."""
        for auth in self.auths:
            if auth.token == bool(token) and auth.available():
                return auth.name
        raise LookupError(f"no auth kind of {self.name!r} fits")


def _no_credentials(config: BackendConfig) -> Credentials:
    return Credentials()


def _static_token(config: BackendConfig) -> Credentials:
    assert config.token is not None  # BackendConfig checks it (Auth.token)
    return StaticToken(config.token)


def _gcloud(config: BackendConfig) -> Credentials:
    return GcloudToken(config.name, metadata_ip=config.gce_metadata_ip)


def _google_adc(config: BackendConfig) -> Credentials:
    return GoogleAdcToken(config.name, metadata_ip=config.gce_metadata_ip)


def _gcloud_installed() -> bool:
    return shutil.which("gcloud") is not None


NONE = Auth("none", _no_credentials)
TOKEN = Auth("token", _static_token, keys=TOKEN_KEYS, token=True)
GCLOUD = Auth("gcloud", _gcloud, metadata=True, available=_gcloud_installed)
GOOGLE_ADC = Auth("google-adc", _google_adc, metadata=True)

JUPYTER = Kind("jupyter", "jupyter_server", (NONE, TOKEN), sessions="backend")
GATEWAY = Kind("gateway", "Jupyter Kernel Gateway or Enterprise Gateway", (NONE, TOKEN),
               sessions="mixer")
GOOGLE = Kind("google", "Google's kernel service", (GCLOUD, GOOGLE_ADC), sessions="backend")

KINDS: tuple[Kind, ...] = (JUPYTER, GATEWAY, GOOGLE)

#: Every auth kind by name, in the order the kinds list them.
AUTHS: dict[str, Auth] = {auth.name: auth for kind in KINDS for auth in kind.auths}
#: The values of a backend's ``sessions``.
SESSIONS_MODES: tuple[str, ...] = (AUTO, *dict.fromkeys(kind.sessions for kind in KINDS))
#: The config-file keys that belong to one auth kind or another (``Auth.keys``).
AUTH_KEYS: tuple[str, ...] = tuple(dict.fromkeys(key for a in AUTHS.values() for key in a.keys))


def kinds_of(auth: str) -> tuple[Kind, ...]:
    """The kinds a backend reached with ``auth`` may be."""
    return tuple(kind for kind in KINDS if any(a.name == auth for a in kind.auths))


def sessions_mode(config: BackendConfig) -> str:
    """Who keeps this backend's sessions: its ``sessions`` if set; for "auto", that of
    its kind when its auth kind tells the kind (Google's service keeps its own), else
    "auto" (ask the backend)."""
    if config.sessions != AUTO:
        return config.sessions
    modes = {kind.sessions for kind in kinds_of(config.auth)}
    return modes.pop() if len(modes) == 1 else AUTO


def credentials_for(config: BackendConfig) -> Credentials:
    """The credentials of a (validated) backend configuration."""
    return AUTHS[config.auth].credentials(config)
