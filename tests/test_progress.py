"""Progress bars redraw on a terminal; streamed to a file (Flower's log, CI) they become periodic log lines."""

import io
import logging

import pytest

from warmfed_flwr.records import progress
from warmfed_flwr.records.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_show_on_terminals_and_log_lines_elsewhere(caplog: pytest.LogCaptureFixture) -> None:
    log, terminal = io.StringIO(), Terminal()
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        for stream in (log, terminal):
            for _ in progress_bar(range(50), desc="client LoRA", file=stream, mininterval=0):
                pass
    assert log.getvalue() == ""
    assert "client LoRA" in terminal.getvalue() and "50/50" in terminal.getvalue()
    lines = [r.getMessage() for r in caplog.records if r.name == progress.__name__]
    assert lines and all("client LoRA" in line for line in lines) and "50/50" in lines[-1]


def test_logged_progress_waits_its_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LOG_INTERVAL", 3600.0)
    bar = progress_bar(range(10), desc="synthesis", file=io.StringIO())
    assert bar.mininterval == bar.maxinterval == 3600.0
    terminal_bar = progress_bar(range(10), desc="synthesis", file=Terminal())
    assert terminal_bar.mininterval != 3600.0
    bar.close()
    terminal_bar.close()
