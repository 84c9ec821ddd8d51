"""Progress bars redraw on a terminal only: streamed to a file (Flower's log, CI) they write nothing."""

import io

from warmfed_flwr.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_stay_out_of_files_and_show_on_terminals():
    log, terminal = io.StringIO(), Terminal()
    for stream in (log, terminal):
        for _ in progress_bar(range(50), desc="client LoRA", file=stream, mininterval=0):
            pass
    assert log.getvalue() == ""
    assert "client LoRA" in terminal.getvalue() and "50/50" in terminal.getvalue()
