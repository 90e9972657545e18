"""Bench tests: make the sibling helper module `bench_cli` importable in any pytest import mode."""

import sys
from pathlib import Path

_dir = str(Path(__file__).resolve().parent)
if _dir not in sys.path:
    sys.path.insert(0, _dir)
