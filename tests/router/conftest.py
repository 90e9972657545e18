"""Router tests: make the sibling helper module `router_http` importable in any pytest import mode."""

import sys
from pathlib import Path

# This folder for its helper module, tests/ for `http_helpers` that it shares.
for _dir in (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))
