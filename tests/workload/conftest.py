"""The real traces under ../shared/data/traces, loaded once per session.

A missing file fails the test that needs it (never skips): these traces are part
of the workplace, so their absence is a broken setup.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from l4_sglang.workload import Trace, load_azure, load_mooncake

TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces"
MOONCAKE = TRACES / "mooncake" / "conversation_trace.jsonl"
AZURE_CODE = TRACES / "azure2023" / "AzureLLMInferenceTrace_code.csv"
AZURE_CONV = TRACES / "azure2023" / "AzureLLMInferenceTrace_conv.csv"


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
