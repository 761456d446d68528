"""Places that run kernels. ``Backend`` (``base``) is the one interface: HTTP requests
with the backend's credentials, timeouts, error mapping and health (``health``);
``credentials`` fetches tokens; ``forwarding`` says what of a client's request may
reach a backend. Who keeps a backend's sessions is ``resources.session_stores``."""

from notebook_kernels_mixer.backends.base import Backend, BackendResponse
from notebook_kernels_mixer.backends.factory import build_backend
from notebook_kernels_mixer.backends.health import Health

__all__ = ["Backend", "BackendResponse", "Health", "build_backend"]
