"""The ``Host`` check against DNS rebinding (issue 11 item 2, SPEC §6).

A page at ``http://evil.example:8081/`` whose name the attacker re-points at
127.0.0.1 reaches the mixer from the user's own browser. It can set its own
``_xsrf`` cookie, its ``Origin`` equals its ``Host``, and the mixer rewrites
``Origin`` for the backends, so every other check passes. The one thing it cannot
choose is the ``Host`` header: the browser sends the attacker's name. So, like
jupyter_server with ``allow_remote_access=False``, the mixer answers only requests
whose ``Host`` names a loopback address, ``localhost``, an address it was told to
listen on, the ``--external-hostname``, or the host of an ``--allow-origin``.
"""

from __future__ import annotations

import ipaddress

from yarl import URL

from notebook_kernels_mixer.config import MixerConfig

LOCAL_NAMES = frozenset({"localhost"})


def hostname(authority: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8081`` → ``::1``), lower-cased."""
    value = authority.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:  # name:port or v4:port; more colons: a bare IPv6 address
        return value.partition(":")[0]
    return value


def is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOCAL_NAMES


def admitted_hosts(config: MixerConfig) -> frozenset[str]:
    """Host names besides loopback ones that users were told to connect with."""
    names = {hostname(h) for h in config.hosts}
    if config.external_hostname:
        names.add(hostname(config.external_hostname))
    for origin in config.allowed_origins:
        try:
            host = URL(origin).host
        except ValueError:
            continue
        if host:
            names.add(host.lower())
    return frozenset(n for n in names if n and not _unspecified(n))


def _unspecified(host: str) -> bool:
    """``0.0.0.0``/``::`` (a wildcard --listen) is no name a user connects with, and
    browsers send ``Host: 0.0.0.0`` for pages that reach local services that way."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def host_allowed(header: str | None, admitted: frozenset[str]) -> bool:
    """Whether a request with this ``Host`` header may be answered.

    A request without ``Host`` is admitted: every browser sends one (HTTP/1.1 makes
    it mandatory), so its absence cannot be a rebinding attack; old HTTP/1.0 tools
    omit it, and tornado treats it as 127.0.0.1 the same way.
    """
    if header is None:
        return True
    host = hostname(header)
    return is_loopback_host(host) or host in admitted


def _origin_key(scheme: str, host: str, port: int | None) -> tuple[str, str, int | None]:
    scheme = scheme.lower()
    return scheme, host.lower().strip("[]"), port or {"http": 80, "https": 443}.get(scheme)


def same_origin(origin: URL, scheme: str, host_header: str) -> bool:
    """Whether ``origin`` is the site a request with this scheme and ``Host`` was
    sent to: scheme, host and port equal, default ports spelt or not."""
    if not origin.absolute or not origin.host:
        return False
    try:
        own = URL.build(scheme=scheme, authority=host_header)
    except (ValueError, TypeError, UnicodeError):
        return False
    return _origin_key(origin.scheme, origin.host, origin.port) == _origin_key(
        scheme, own.host or "", own.port)
