"""The real traces (the bench suite's traces folder: $L4_TRACES_DIR, else ../shared/data/traces beside
the checkout), loaded once per session.

A missing file fails the test that needs it (never skips): these traces are part
of the workplace, so their absence is a broken setup.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from l4_sglang.bench.suite import REAL_TRACES, default_traces_dir
from l4_sglang.workload import Trace, load_azure, load_mooncake

TRACES = Path(os.environ.get("L4_TRACES_DIR") or default_traces_dir())
MOONCAKE = TRACES / REAL_TRACES["mooncake_conversation"]
AZURE_CODE = TRACES / REAL_TRACES["azure_code"]
AZURE_CONV = TRACES / REAL_TRACES["azure_conversation"]


def trace_path(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"trace file missing: {path} (the shared traces, see {TRACES / 'SOURCES.md'})")
    return path


@pytest.fixture(scope="session")
def mooncake_path() -> Path:
    return trace_path(MOONCAKE)


@pytest.fixture(scope="session")
def azure_code_path() -> Path:
    return trace_path(AZURE_CODE)


@pytest.fixture(scope="session")
def mooncake() -> Trace:
    return load_mooncake(trace_path(MOONCAKE), seed=0)


@pytest.fixture(scope="session")
def azure_code() -> Trace:
    return load_azure(trace_path(AZURE_CODE))


@pytest.fixture(scope="session")
def azure_conv() -> Trace:
    return load_azure(trace_path(AZURE_CONV))
