"""Places that run kernels. ``Backend`` is the one interface; see ``base``."""

from notebook_kernels_mixer.backends.base import Backend, BackendResponse, Health
from notebook_kernels_mixer.backends.factory import build_backend

__all__ = ["Backend", "BackendResponse", "Health", "build_backend"]
