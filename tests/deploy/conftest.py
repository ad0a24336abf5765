"""Deploy tests need the helm binary from .ci/install-tools.sh; skip without it."""

from __future__ import annotations

import pytest

from tests.deploy.render import HELM, helm_available


@pytest.fixture(scope="session")
def helm() -> str:
    if not helm_available():
        pytest.skip(f"{HELM} is absent: run .ci/install-tools.sh to install helm")
    return str(HELM)
