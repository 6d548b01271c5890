"""Shared by the report tests: real run directories of every experiment, and the TeX skip mark."""

from __future__ import annotations

from pathlib import Path

import pytest

from sublens.report.compile import tex_available

RUNS = Path(__file__).resolve().parent / "data" / "runs"  # one real run per experiment (quick presets)
needs_tex = pytest.mark.skipif(not tex_available(), reason="TeX not installed (make test installs it)")
