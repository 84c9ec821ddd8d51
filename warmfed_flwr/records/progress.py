"""Progress bars that redraw on a terminal and become a log line every 30 s elsewhere (Flower's streamed output
and CI logs are files), so a long stage never runs silent."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

LOG_INTERVAL = float(os.environ.get("WARMFED_PROGRESS_INTERVAL", "30"))
"""Seconds between two progress log lines of one stage when the output is not a terminal (environment variable
WARMFED_PROGRESS_INTERVAL, default 30)."""


class _LogLines:
    """A file-like sink that logs each non-empty line tqdm writes."""

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            logger.info("%s", line)

    def flush(self) -> None:
        """Nothing is buffered."""


class _LoggedBar(tqdm):
    """A bar written as log lines: a new postfix waits for the next interval's line instead of forcing one."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = False, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh, **kwargs)


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """A tqdm bar on a terminal; elsewhere the same bar as an INFO log line at most every ``LOG_INTERVAL`` s."""
    stream = kwargs.get("file") or sys.stderr
    if kwargs.get("disable") or (hasattr(stream, "isatty") and stream.isatty()):
        return tqdm(*args, **kwargs)
    kwargs.update(file=_LogLines(), mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, ascii=True, ncols=80)
    return _LoggedBar(*args, **kwargs)


class Heartbeat:
    """A stage spent waiting on other processes (clients training or evaluating): from :meth:`start` until
    :meth:`stop`, a daemon thread logs "<label>: <N> s so far" every ``interval`` seconds, so the streamed log never
    runs silent while the work happens where its own log lines do not reach."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = LOG_INTERVAL if interval is None else interval
        self._started = time.perf_counter()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, label: str) -> None:
        """Start timing ``label`` (stopping any previous wait) and log it every ``interval`` seconds."""
        self.stop()
        started, stopped = time.perf_counter(), threading.Event()

        def beat() -> None:
            while not stopped.wait(self.interval):
                logger.info("%s: %.0f s so far", label, time.perf_counter() - started)

        self._started, self._stopped = started, stopped
        self._thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> float:
        """End the current wait; the seconds since :meth:`start`."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return time.perf_counter() - self._started
