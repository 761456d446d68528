"""Builds a Backend from its configuration: picks the credentials for its auth kind."""

from __future__ import annotations

from notebook_kernels_mixer.backends.base import Backend
from notebook_kernels_mixer.backends.credentials import (
    Credentials,
    GcloudToken,
    GoogleAdcToken,
    StaticToken,
)
from notebook_kernels_mixer.config import BackendConfig


def credentials_for(config: BackendConfig) -> Credentials:
    if config.auth == "token":
        assert config.token is not None  # BackendConfig validates this
        return StaticToken(config.token)
    if config.auth == "gcloud":
        return GcloudToken(config.name, metadata_ip=config.gce_metadata_ip)
    if config.auth == "google-adc":
        return GoogleAdcToken(config.name, metadata_ip=config.gce_metadata_ip)
    return Credentials()


def build_backend(config: BackendConfig) -> Backend:
    return Backend(config, credentials_for(config))
