"""Shared fixtures: one cache directory (digits arrays, tiny foundation) per test session."""

import pytest


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """A cache directory shared by every test of the session."""
    return tmp_path_factory.mktemp("warmfed-cache")
