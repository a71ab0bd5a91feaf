"""pytest configuration for the kind end-to-end tests (opt-in: ``GYRE_E2E=1 pytest e2e``)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: builds the images and runs Gyre on a kind cluster (needs Docker)"
    )
