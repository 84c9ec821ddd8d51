"""Shared fixtures: one cache directory (digits arrays, tiny foundation) per test session, and a private simulation
SuperLink per test module that runs `flwr run`."""

import pytest

from benchmarks.harness import Processes, start_superlink

PROGRESS_SECONDS = 1
"""The runs' progress-line interval (WARMFED_PROGRESS_INTERVAL; 30 s by default), short so tiny stages show it."""


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    """A simulation SuperLink of this test module, registered as the connection 'test'."""
    procs = Processes(tmp_path_factory.mktemp("flwr-home"))
    procs.env["WARMFED_PROGRESS_INTERVAL"] = str(PROGRESS_SECONDS)
    start_superlink(procs, simulation=True)
    yield procs
    procs.stop()


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
