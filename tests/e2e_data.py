"""Where the tests find the real E2E data: $SPLITLORA_DATA, else a development machine's data folder
beside the checkout (never in the repository; docs/data.md says how to get the data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.data.locate import csv_dir


def e2e_dir() -> Path | None:
    """The directory holding the official CSVs, or None when the data is absent."""
    env = os.environ.get("SPLITLORA_DATA")
    for cand in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[2] / "shared/data/e2e"]:
        found = csv_dir(cand)
        if found is not None:
            return found
    return None


E2E = e2e_dir()


def needs_data(fn):
    """Mark a test as needing the real E2E data and skip it when that is absent."""
    skip = pytest.mark.skipif(E2E is None, reason="E2E data not found: set SPLITLORA_DATA (docs/data.md)")
    return pytest.mark.needs_data(skip(fn))
