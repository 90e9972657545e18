"""The published traces load with the counts, spans and lengths SOURCES.md lists."""

from __future__ import annotations

import json

import numpy as np
import pytest

from l4_sglang.workload import load_mooncake, load_trace


def test_mooncake_counts_span_and_order(mooncake):
    assert len(mooncake) == 12_031
    assert mooncake.name == "conversation_trace"
    assert 3400 < mooncake.duration_s < 3700
    arrivals = mooncake.arrivals()
    assert np.all(np.diff(arrivals) >= 0)
    assert arrivals[-1] <= mooncake.duration_s


def test_mooncake_arrivals_within_their_3s_window(mooncake, mooncake_path):
    # Recover each request's quantized timestamp from the file, matched by
    # (lengths, hash ids), and check it arrives in [t, t + 3).
    windows: dict[tuple, list[float]] = {}
    with mooncake_path.open() as f:
        for line in f:
            o = json.loads(line)
            key = (o["input_length"], o["output_length"], tuple(o["hash_ids"]))
            windows.setdefault(key, []).append(o["timestamp"] / 1000.0)
    for r in mooncake:
        starts = windows[(r.prompt_tokens, r.output_tokens, r.hash_ids)]
        assert any(t <= r.arrival_s < t + 3.0 for t in starts), (r, starts)


def test_mooncake_jitter_is_seeded(mooncake, mooncake_path):
    again = load_mooncake(mooncake_path, seed=0)
    assert again.requests == mooncake.requests
    other = load_mooncake(mooncake_path, seed=1)
    assert not np.array_equal(other.arrivals(), mooncake.arrivals())
    assert sorted(other.prompt_lengths()) == sorted(mooncake.prompt_lengths())


def test_azure_counts_and_spans(azure_code, azure_conv):
    assert len(azure_code) == 8_819
    assert len(azure_conv) == 19_366
    for t in (azure_code, azure_conv):
        assert 3300 < t.duration_s < 3700
        arrivals = t.arrivals()
        assert arrivals[0] == 0.0
        assert np.all(np.diff(arrivals) >= 0)
    # First row of the code trace: 2023-11-16 18:17:03.9799600, 4808 / 10 tokens.
    assert (azure_code[0].prompt_tokens, azure_code[0].output_tokens) == (4808, 10)
    # The 7-digit fractions survive: the second row is 0.052 s after the first.
    assert azure_code[1].arrival_s == pytest.approx(0.052, abs=1e-6)


@pytest.mark.parametrize(
    ("fixture", "input_p50", "output_p50"),
    [("mooncake", 6_909, 350), ("azure_code", 1_469, 13), ("azure_conv", 1_020, 129)],
)
def test_median_lengths_match_sources(request, fixture, input_p50, output_p50):
    t = request.getfixturevalue(fixture)
    assert np.median(t.prompt_lengths()) == pytest.approx(input_p50, abs=1)
    assert np.median(t.output_lengths()) == pytest.approx(output_p50, abs=1)


def test_load_trace_dispatches_by_suffix(mooncake, mooncake_path, azure_code_path, tmp_path):
    assert load_trace(mooncake_path, seed=0).requests == mooncake.requests
    assert len(load_trace(azure_code_path)) == 8_819
    odd = tmp_path / "trace.parquet"
    odd.write_text("")
    with pytest.raises(ValueError, match=r"trace\.parquet"):
        load_trace(odd)


def test_mooncake_rows_carry_their_prefix_hashes(mooncake):
    assert len(mooncake[5].hash_ids) > 0
