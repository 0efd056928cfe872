"""A real Chromium for the dashboard's tests: Debian's `chromium` package driven by Playwright (its own
browser download cannot reach its host here). `missing()` says why the browser tests cannot run on
this machine, or None; conftest.py prints it as one summary line when they were skipped."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("TICKVAULT_CHROMIUM", "/usr/bin/chromium"))


def missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set TICKVAULT_CHROMIUM)"
    return None
