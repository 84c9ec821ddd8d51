"""Progress bars that redraw on a terminal and become a log line every 30 s elsewhere (Flower's streamed output
and CI logs are files), so a long stage never runs silent."""

from __future__ import annotations

import logging
import sys
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

LOG_INTERVAL = 30.0
"""Seconds between two progress log lines of one stage when the output is not a terminal."""


class _LogLines:
    """A file-like sink that logs each non-empty line tqdm writes."""

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            logger.info("%s", line)

    def flush(self) -> None:
        """Nothing is buffered."""


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """A tqdm bar on a terminal; elsewhere the same bar as an INFO log line at most every ``LOG_INTERVAL`` s."""
    stream = kwargs.get("file") or sys.stderr
    if kwargs.get("disable") or (hasattr(stream, "isatty") and stream.isatty()):
        return tqdm(*args, **kwargs)
    kwargs.update(file=_LogLines(), mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, ascii=True, ncols=80)
    return tqdm(*args, **kwargs)
