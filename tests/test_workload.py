"""Workload.from_requests: the histogram the DP consumes, checked against hand counts."""

import numpy as np
import pytest

from l4_sglang import Workload, log_bin_edges


def test_log_bin_edges():
    edges = log_bin_edges(8, max_tokens=4096, min_tokens=16)
    assert edges[0] == 0 and edges[-1] == pytest.approx(4096) and edges.size == 9
    assert np.all(np.diff(edges) > 0)
    with pytest.raises(ValueError, match="bins"):
        log_bin_edges(0)


def test_from_requests_counts_by_hand():
    edges = [0, 100, 1000, 10_000]
    # Two requests: prompt 50 + 100 outputs (contexts 50..149 cross edge 100),
    # prompt 500 + 10 outputs (contexts 500..509, stays in bin 1).
    w = Workload.from_requests([50, 500], [100, 10], duration_s=10.0, edges=edges)
    assert w.arrival_rate.tolist() == [0.1, 0.1, 0.0]
    assert w.prompt_tokens.tolist() == [50, 500, 0]
    # Bin 0 holds contexts 50..99 (50 tokens); bin 1 holds 100..149 and 500..509 (60 tokens).
    assert w.decode_rate.tolist() == pytest.approx([5.0, 6.0, 0.0])
    assert w.decode_context[0] == pytest.approx(74.5)
    assert w.decode_context[1] == pytest.approx((50 * 124.5 + 10 * 504.5) / 60)
    assert w.growth_rate.tolist() == pytest.approx([0.0, 0.1, 0.0])


def test_scaled_multiplies_rates_only():
    w = Workload.from_requests([50, 500], [100, 10], duration_s=10.0, edges=[0, 100, 1000, 10_000])
    s = w.scaled(3)
    assert np.allclose(s.arrival_rate, 3 * w.arrival_rate)
    assert np.allclose(s.prompt_tokens, w.prompt_tokens)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"arrival_rate": [1.0]}, "arrival_rate"),
        ({"decode_rate": "fast"}, "decode_rate"),
        ({"edges": [5]}, "edges"),
    ],
)
def test_bad_shapes_name_the_field(kwargs, field):
    base = dict(
        edges=[0, 10, 20],
        arrival_rate=[1, 1],
        prompt_tokens=[5, 15],
        decode_rate=[1, 1],
        decode_context=[5, 15],
        growth_rate=[0, 0],
    )
    with pytest.raises(ValueError, match=field):
        Workload(**(base | kwargs))


def test_from_requests_rejects_bad_lists():
    with pytest.raises(ValueError, match="prompt_tokens"):
        Workload.from_requests([1, 2], [1], 10.0, [0, 10])
    with pytest.raises(ValueError, match="duration_s"):
        Workload.from_requests([1], [1], 0.0, [0, 10])
