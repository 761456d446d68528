"""Builds a Backend from its configuration, with the credentials of its auth kind
(``kinds``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from notebook_kernels_mixer.backends.base import Backend
from notebook_kernels_mixer.backends.kinds import credentials_for

if TYPE_CHECKING:
    from notebook_kernels_mixer.config import BackendConfig


def build_backend(config: BackendConfig) -> Backend:
    return Backend(config, credentials_for(config))
