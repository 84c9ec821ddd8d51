"""The FAB that `flwr run .` ships to every node: the app's code and configs, none of the committed results."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

ROOT = Path(__file__).resolve().parents[1]


def test_the_fab_holds_the_app_and_leaves_the_committed_results_out():
    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT))).namelist()
    assert {"warmfed_flwr/server_app.py", "warmfed_flwr/client_app.py", "conf/warmfed.yaml"} <= set(names)
    assert any(name.startswith("strategies/") for name in names) and any(name.startswith("clients/") for name in names)
    assert [name for name in names if name.startswith("results/")] == []
