"""scale_rate, truncate, cap_lengths on small hand-made traces and the real Mooncake trace."""

from __future__ import annotations

import numpy as np
import pytest

from l4_sglang.workload import Trace, TraceRequest, cap_lengths, scale_rate, truncate


def small() -> Trace:
    reqs = [TraceRequest(float(i), 100 * (i + 1), 10, (i, i + 1)) for i in range(10)]
    return Trace(reqs, name="small", duration_s=10.0)


def test_trace_sorts_and_checks_duration():
    t = Trace([TraceRequest(2.0, 1, 1), TraceRequest(1.0, 2, 2)])
    assert [r.arrival_s for r in t] == [1.0, 2.0] and t.duration_s == 2.0
    with pytest.raises(ValueError, match="duration_s"):
        Trace([TraceRequest(2.0, 1, 1)], duration_s=1.0)


def test_scale_rate_halves_duration(mooncake):
    fast = scale_rate(mooncake, 2)
    assert len(fast) == len(mooncake)
    assert fast.duration_s == pytest.approx(mooncake.duration_s / 2)
    assert np.allclose(fast.arrivals(), mooncake.arrivals() / 2)
    assert fast.mean_rate == pytest.approx(2 * mooncake.mean_rate)
    assert np.array_equal(fast.prompt_lengths(), mooncake.prompt_lengths())


@pytest.mark.parametrize("factor", [0, -1.0, float("nan"), float("inf")])
def test_scale_rate_rejects_bad_factor(factor):
    with pytest.raises(ValueError, match="factor"):
        scale_rate(small(), factor)


def test_truncate_by_count_and_duration(mooncake):
    t = small()
    assert len(truncate(t, count=3)) == 3 and truncate(t, count=3).duration_s == 2.0
    by_time = truncate(t, duration_s=4.5)
    assert [r.arrival_s for r in by_time] == [0.0, 1.0, 2.0, 3.0, 4.0] and by_time.duration_s == 4.5
    both = truncate(t, count=2, duration_s=4.5)
    assert len(both) == 2
    assert len(truncate(t)) == 10 and truncate(t).duration_s == 10.0
    ten_min = truncate(mooncake, duration_s=600)
    assert 0 < len(ten_min) < len(mooncake)
    assert ten_min.arrivals().max() < 600 and ten_min.duration_s == 600
    with pytest.raises(ValueError, match="count"):
        truncate(t, count=-1)
    with pytest.raises(ValueError, match="duration_s"):
        truncate(t, duration_s=-1.0)


def test_cap_lengths_trims_prompt_then_output():
    t = Trace(
        [
            TraceRequest(0.0, 100, 50),  # fits: unchanged
            TraceRequest(1.0, 1500, 100, tuple(range(3))),  # prompt trimmed to 924 (2 blocks)
            TraceRequest(2.0, 800, 2000),  # prompt to 1, output to 1023
        ]
    )
    capped = cap_lengths(t, 1024)
    assert capped[0] == t[0]
    assert (capped[1].prompt_tokens, capped[1].output_tokens, capped[1].hash_ids) == (924, 100, (0, 1))
    assert (capped[2].prompt_tokens, capped[2].output_tokens) == (1, 1023)
    with pytest.raises(ValueError, match="max_context"):
        cap_lengths(t, 1)


def test_cap_lengths_on_mooncake(mooncake):
    cap = 32_768
    capped = cap_lengths(mooncake, cap)
    total = capped.prompt_lengths() + capped.output_lengths()
    assert total.max() <= cap
    assert np.array_equal(capped.arrivals(), mooncake.arrivals())
    over = mooncake.prompt_lengths() + mooncake.output_lengths() > cap
    assert over.any()
    assert np.array_equal(capped.output_lengths(), mooncake.output_lengths())  # outputs <= 2000
    assert np.all(capped.prompt_lengths()[~over] == mooncake.prompt_lengths()[~over])
