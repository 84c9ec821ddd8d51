"""Progress bars redraw on a terminal; streamed to a file (Flower's log, CI) they become periodic log lines."""

import io
import logging
import time

import pytest

from warmfed_flwr.records import progress
from warmfed_flwr.records.progress import progress_bar
from warmfed_flwr.records.results import RunRecorder


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


def test_a_loss_postfix_set_every_step_does_not_add_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        bar = progress_bar(range(200), desc="foundation VAE", unit="step", file=io.StringIO())
        for step in bar:
            bar.set_postfix(mse=f"{1 / (step + 1):.4f}")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= 2 and "200/200" in lines[-1], lines


def test_heartbeat_logs_every_interval_until_stopped(caplog: pytest.LogCaptureFixture) -> None:
    beat = progress.Heartbeat(interval=0.05)
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        beat.start("round 0: waiting for 4 client(s) to fine-tune their LoRA adapters")
        time.sleep(0.32)
        waited = beat.stop()
        count = len(caplog.records)
        time.sleep(0.15)
    lines = [r.getMessage() for r in caplog.records]
    assert 4 <= count <= 7, lines
    assert len(lines) == count, "no line after stop()"
    assert all(line.startswith("round 0: waiting for 4 client(s)") and line.endswith("s so far") for line in lines)
    assert 0.3 <= waited < 1.0


def test_a_short_wait_logs_nothing_and_a_new_start_ends_the_previous_wait(caplog: pytest.LogCaptureFixture) -> None:
    beat = progress.Heartbeat(interval=0.2)
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        beat.start("first")
        beat.start("second")
        time.sleep(0.3)
        beat.stop()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["second"]


def test_recorder_times_a_stage_and_logs_it_while_it_lasts(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.05)
    recorder = RunRecorder(tmp_path / "run", {"algorithm": "warmfed"})
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        with recorder.timed("synthesis", "round 0: synthesis"):
            time.sleep(0.2)
        with pytest.raises(RuntimeError), recorder.timed("synthesis", "round 0: synthesis"):
            raise RuntimeError("boom")
    assert 0.2 <= recorder.stage_seconds["synthesis"] < 1.0
    assert any(r.getMessage().startswith("round 0: synthesis: ") for r in caplog.records)
