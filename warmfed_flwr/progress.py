"""Progress bars that redraw on a terminal and stay out of logs: Flower's streamed output and CI logs are files."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """A tqdm bar that is shown only when its output is a terminal (``disable=None``); stages log one line instead."""
    kwargs.setdefault("disable", None)
    return tqdm(*args, **kwargs)
