"""What both apps do at start-up: resolve the config, its paths and the device; report errors in one line."""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from warmfed_flwr.config.loading import absolute_path
from warmfed_flwr.config.schema import ExperimentConfig
from warmfed_flwr.data import default_cache_dir
from warmfed_flwr.errors import RunStoppedError, WarmFedError

logger = logging.getLogger("warmfed_flwr")
T = TypeVar("T")
PROJECT_PACKAGES = ("warmfed_flwr", "strategies", "clients")


def cache_dir(cfg: ExperimentConfig) -> Path:
    """The cache directory for data, the tiny foundation and synthetic sets."""
    return absolute_path("cache-dir", cfg.cache_dir) if cfg.cache_dir else default_cache_dir()


def run_dir(cfg: ExperimentConfig) -> Path:
    """The directory this run writes its results to (a nested experiment's '/' become '-': paper-pacs)."""
    experiment = Path(cfg.experiment).with_suffix("").as_posix().strip("/").replace("/", "-")
    name = cfg.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{experiment}-{cfg.algorithm}-s{cfg.seed}"
    return absolute_path("output-dir", cfg.output_dir) / name


def show_logs_in_flower_output() -> None:
    """Send the project's INFO logs through Flower's console handler, so `flwr run --stream` and `flwr log` show them.

    Flower configures only its own logger; without a handler Python would drop the project's INFO records.
    The ServerApp calls this; clients, built anew for every message, keep to warnings.
    """
    from flwr.common.logger import console_handler

    for name in PROJECT_PACKAGES:
        package_logger = logging.getLogger(name)
        package_logger.setLevel(logging.INFO)
        package_logger.addHandler(console_handler)


def one_line_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn a project error raised by ``fn`` into one logged line, then stop with :class:`RunStoppedError`.

    Flower catches the RunStoppedError: a ServerApp's run ends as ``finished:failed`` (``flwr ls``), a client's reply
    counts as failed.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except WarmFedError as exc:
            logger.error("%s: %s", type(exc).__name__, exc)
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            raise RunStoppedError(f"{type(exc).__name__}: {exc}") from None

    return wrapper
