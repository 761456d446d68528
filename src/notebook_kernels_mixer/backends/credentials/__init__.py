"""Credentials for backends: what a backend's requests carry to be let in.

* ``base``: the ``Credentials`` interface (``headers``, ``rejected``, ``accepted``,
  ``state``, ``close``), ``CredentialError``, and ``StaticToken`` (a Jupyter token);
* ``refreshing``: ``RefreshingToken``, a bearer token cached until near its expiry
  (one refresh for every waiting caller, bounded waits, backoff, refresh-once on a
  refusal); a source subclasses it and writes ``_fetch``;
* ``gcloud``: ``GcloudToken``, ``gcloud config config-helper`` (as the Go original),
  run again when the gcloud configuration changes (an account switch);
* ``google``: ``GoogleAdcToken``, Application Default Credentials (google-auth, in a
  thread), and the helpers the Google sources share.

Which auth kind uses which class is ``backends.kinds``.
"""

from notebook_kernels_mixer.backends.credentials.base import (
    CredentialError,
    Credentials,
    StaticToken,
)
from notebook_kernels_mixer.backends.credentials.gcloud import (
    GcloudConfigWatch,
    GcloudToken,
    gcloud_config_dir,
)
from notebook_kernels_mixer.backends.credentials.google import (
    CLOUD_PLATFORM_SCOPE,
    GoogleAdcToken,
    metadata_env,
    parse_expiry,
)
from notebook_kernels_mixer.backends.credentials.refreshing import RefreshingToken

__all__ = [
    "CLOUD_PLATFORM_SCOPE",
    "CredentialError",
    "Credentials",
    "GcloudConfigWatch",
    "GcloudToken",
    "GoogleAdcToken",
    "RefreshingToken",
    "StaticToken",
    "gcloud_config_dir",
    "metadata_env",
    "parse_expiry",
]
