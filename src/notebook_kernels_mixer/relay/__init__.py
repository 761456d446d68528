"""Kernel websockets: the upgrade to the backend (``upgrade``), the byte splice
(``tunnel``), and the relay that ties them to requests and sessions (``relay``)."""

from notebook_kernels_mixer.relay.relay import Relay

__all__ = ["Relay"]
