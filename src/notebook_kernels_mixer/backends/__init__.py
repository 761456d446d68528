"""Places that run kernels. ``Backend`` (``base``) is the one interface: HTTP requests
with the backend's credentials (``Backend.authorized``: the one retry-on-401/403 path,
for REST and the websocket upgrade alike), timeouts, error mapping and health
(``health``); ``kinds`` says what each kind of backend is (its auth kinds and their
credentials, who keeps its sessions, its config-file keys); ``credentials/`` fetches
tokens; ``forwarding`` says what of a client's request may reach a backend;
``factory`` builds a Backend from its configuration.

Nothing here imports the configuration at run time (``config`` imports ``kinds``)."""

from notebook_kernels_mixer.backends.base import Backend, BackendResponse
from notebook_kernels_mixer.backends.factory import build_backend
from notebook_kernels_mixer.backends.health import Health

__all__ = ["Backend", "BackendResponse", "Health", "build_backend"]
