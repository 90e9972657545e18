"""Where the public traces live: the real workloads' files under --traces-dir (the suite, capacity,
ablation and the tests find them here)."""

from __future__ import annotations

from pathlib import Path

REAL_TRACES = {
    "mooncake_conversation": "mooncake/conversation_trace.jsonl",
    "azure_code": "azure2023/AzureLLMInferenceTrace_code.csv",
    "azure_conversation": "azure2023/AzureLLMInferenceTrace_conv.csv",
}
"""Real workloads: paths under --traces-dir."""


def default_traces_dir() -> Path:
    """`<checkout>/../shared/data/traces`, where the project keeps the public traces: beside the
    source tree of an editable install, else beside the working directory (an installed package
    lives in site-packages, far from any checkout)."""
    beside_source = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "traces"
    return beside_source if beside_source.is_dir() else Path.cwd().parent / "shared" / "data" / "traces"


TRACES_DIR_HELP = "the public traces (default: <checkout>/../shared/data/traces)"


def trace_path(traces_dir: str | Path | None, workload: str) -> Path:
    """The file of a real workload (`REAL_TRACES`) under traces_dir (None: `default_traces_dir()`)."""
    return (Path(traces_dir) if traces_dir else default_traces_dir()) / REAL_TRACES[workload]
