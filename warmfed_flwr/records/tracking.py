"""Experiment tracking (tracking.backend): a run's per-round metrics and stage times sent to TensorBoard or MLflow.

Both write local files under the run directory (``tensorboard/`` event files, ``mlflow.db``); nothing goes online.
The config is logged as hyperparameters and the run directory's name as the run name.
"""

from __future__ import annotations

import importlib
import math
import time
from pathlib import Path
from typing import Any

from warmfed_flwr.errors import ConfigError

BACKENDS = ("none", "tensorboard", "mlflow")
INSTALL_HINT = 'pip install -e ".[tracking]"'
TIME_PREFIX = "time/"
"""Stage times are logged as ``time/<stage>`` at the run's last round."""


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of one metrics.json row (or time table) as floats; NaN, infinities and non-numbers left out."""
    return {key: float(value) for key, value in row.items()
            if key != "round" and isinstance(value, (int, float)) and math.isfinite(value)}


class Tracker:
    """Sends each new or changed per-round value once, and the stage times when the run finishes."""

    def __init__(self) -> None:
        self.sent: dict[tuple[int, str], float] = {}

    def send_rounds(self, rounds: list[dict[str, Any]]) -> None:
        """Log every value of ``rounds`` not yet logged with that value, at its round as the step."""
        for row in rounds:
            step = int(row["round"])
            fresh = {key: value for key, value in scalars(row).items() if self.sent.get((step, key)) != value}
            if fresh:
                self.log(step, fresh)
                self.sent.update({(step, key): value for key, value in fresh.items()})

    def finish(self, rounds: list[dict[str, Any]], timing: dict[str, float]) -> None:
        """Log the rounds not yet logged and the seconds per stage, then close the store."""
        self.send_rounds(rounds)
        step = max((int(row["round"]) for row in rounds), default=0)
        self.log(step, {TIME_PREFIX + stage: seconds for stage, seconds in scalars(timing).items()})
        self.close()

    def log(self, step: int, values: dict[str, float]) -> None:
        """Write ``values`` at ``step``."""
        raise NotImplementedError

    def close(self) -> None:
        """Flush and close the store."""
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Scalars and the config's hyperparameters in ``<run dir>/tensorboard``."""

    def __init__(self, directory: Path, run_name: str, config: dict[str, Any]) -> None:
        super().__init__()
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(directory / "tensorboard"))
        self.writer.add_text("run_name", run_name)
        for summary in hparams({key: _param(value) for key, value in config.items()}, {}):
            self.writer.file_writer.add_summary(summary)

    def log(self, step: int, values: dict[str, float]) -> None:
        """Write ``values`` as scalars at ``step``."""
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class MlflowTracker(Tracker):
    """A run named after the run directory in ``<run dir>/mlflow.db``, with the config as its parameters.

    MLflow 3 refuses plain ``file:`` stores unless told otherwise; a SQLite file is its local store.
    """

    def __init__(self, directory: Path, run_name: str, config: dict[str, Any]) -> None:
        super().__init__()
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri(directory))
        experiment = self.client.get_experiment_by_name("warmfed")
        experiment_id = (experiment.experiment_id if experiment else self.client.create_experiment(
            "warmfed", artifact_location=(directory / "mlflow-artifacts").resolve().as_uri()))
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        self.client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in config.items()])

    def log(self, step: int, values: dict[str, float]) -> None:
        """Write ``values`` as metrics at ``step``."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, stamp, step) for key, value in values.items()])

    def close(self) -> None:
        """Mark the run finished."""
        self.client.set_terminated(self.run_id)


def tracking_uri(directory: Path) -> str:
    """The MLflow tracking URI of the run writing to ``directory``."""
    return f"sqlite:///{(directory / 'mlflow.db').resolve()}"


def open_tracker(backend: str, directory: Path, config: dict[str, Any]) -> Tracker | None:
    """The tracker of ``backend`` for the run writing to ``directory`` (None for 'none'); a missing package stops
    with a ConfigError that names the extra to install."""
    if backend == "none":
        return None
    if backend not in BACKENDS:
        raise ConfigError(f"config key 'tracking.backend' = {backend!r} must be one of {', '.join(BACKENDS)}")
    try:
        importlib.import_module(backend)
    except ImportError:
        raise ConfigError(f"config key 'tracking.backend' = '{backend}' needs the package '{backend}': "
                          f"{INSTALL_HINT}") from None
    kind = TensorBoardTracker if backend == "tensorboard" else MlflowTracker
    return kind(directory, directory.name, config)


def _param(value: Any) -> bool | int | float | str:
    return value if isinstance(value, (bool, int, float, str)) else str(value)
