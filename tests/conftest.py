"""Shared fixtures: one cache directory (digits arrays, tiny foundation) per test session."""

import pytest


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """A cache directory shared by every test of the session."""
    return tmp_path_factory.mktemp("warmfed-cache")


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """An untrained tiny Stable Diffusion pipeline saved in diffusers format, as a real checkpoint would be."""
    from warmfed_flwr.generative.tiny_architecture import build_tiny_pipeline

    directory = tmp_path_factory.mktemp("tiny-sd")
    build_tiny_pipeline(seed=0).save_pretrained(directory)
    return directory
