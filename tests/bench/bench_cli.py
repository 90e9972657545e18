"""`python -m l4_sglang.bench` as a subprocess, for the bench tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    # The subprocess imports l4_sglang as the tests do: the installed package (a clean clone has
    # no built core under python/); plots render without a display.
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, "-m", "l4_sglang.bench", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
