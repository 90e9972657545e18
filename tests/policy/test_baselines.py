"""The baselines on made-up snapshots."""

from __future__ import annotations

import math

import pytest

from l4_sglang.policy import Migration, NoWorkerAvailable, RequestInfo, make_policy


def with_workers(model, name, workers, overrides=None, seed=0):
    p = make_policy(name, model, overrides, seed=seed)
    for w in workers:
        p.add_worker(w, 0.0)
    return p


def test_round_robin_cycles_over_healthy_workers(model, snap):
    p = with_workers(model, "round_robin", ["a", "b", "c"])
    assert [p.route(RequestInfo(f"r{i}", 10), 0.0) for i in range(6)] == list("abcabc")
    p.on_load([snap("b", healthy=False)], 1.0)
    assert {p.route(RequestInfo(f"s{i}", 10), 1.0) for i in range(6)} == {"a", "c"}
    p.remove_worker("a", 2.0)
    assert {p.route(RequestInfo(f"t{i}", 10), 2.0) for i in range(3)} == {"c"}


@pytest.mark.parametrize("name", ["round_robin", "random", "power_of_two", "least_load", "llumnix", "l4"])
def test_no_healthy_worker_raises(model, snap, name):
    p = make_policy(name, model)
    with pytest.raises(NoWorkerAvailable):
        p.route(RequestInfo("r", 10), 0.0)
    p.add_worker("a", 0.0)
    p.on_load([snap("a", healthy=False)], 0.0)
    with pytest.raises(NoWorkerAvailable):
        p.route(RequestInfo("r", 10), 0.0)
    p.on_load([snap("a")], 1.0)
    assert p.route(RequestInfo("r", 10), 1.0) == "a"


def test_random_is_seeded(model):
    def picks(seed):
        p = with_workers(model, "random", list("abcde"), seed=seed)
        return [p.route(RequestInfo(f"r{i}", 10), 0.0) for i in range(40)]

    assert picks(1) == picks(1) and picks(1) != picks(2)
    assert set(picks(1)) == set("abcde")


def test_power_of_two_never_picks_the_worse_of_its_two(model, snap):
    workers = list("abcde")
    loads = [snap(w, running=10 * (i + 1)) for i, w in enumerate(workers)]
    p = with_workers(model, "power_of_two", workers, seed=7)
    picks = []
    for i in range(300):
        p.on_load(loads, float(i))  # the same loads before every pick
        picks.append(p.route(RequestInfo(f"r{i}", 100), float(i)))
    assert "e" not in picks
    assert picks.count("a") > picks.count("b") > picks.count("c") > picks.count("d") > 0


def test_power_of_two_breaks_request_ties_by_tokens(model, snap):
    p = with_workers(model, "power_of_two", ["a", "b"])
    p.on_load([snap("a", running=5, ctx=9000), snap("b", running=5, ctx=100)], 0.0)
    assert p.route(RequestInfo("r", 10), 0.0) == "b"


def test_least_load_picks_fewest_outstanding_tokens(model, snap):
    p = with_workers(model, "least_load", list("abc"))
    p.on_load(
        [snap("a", running=2, ctx=5000), snap("b", running=8, ctx=500), snap("c", waiting=1, ctx=9000)], 0
    )
    assert p.route(RequestInfo("r1", 100), 0.0) == "b"  # 4000 tokens beats 9000 and 10000
    # What it routed counts until the next poll: a 6000-token prompt makes b the heaviest.
    assert p.route(RequestInfo("r2", 6000), 0.1) == "b"
    assert p.route(RequestInfo("r3", 100), 0.2) == "c"


def test_static_buckets_route_by_length(model, snap):
    p = with_workers(model, "static_buckets", [f"w{i}" for i in range(5)], {"boundaries": (1000, 10000)})
    view = p.layout()
    assert [s.workers for s in view.stages] == [("w0", "w1"), ("w2", "w3"), ("w4",)]
    assert [(s.lo_tokens, s.hi_tokens) for s in view.stages] == [(0, 1000), (1000, 10000), (10000, math.inf)]
    for prompt, group in [(10, {"w0", "w1"}), (999, {"w0", "w1"}), (1000, {"w2", "w3"}), (50_000, {"w4"})]:
        assert {p.route(RequestInfo(f"r{prompt}-{i}", prompt), 0.0) for i in range(4)} == group
    # A bucket without a healthy worker spills to the nearest one.
    p.on_load([snap("w4", healthy=False)], 1.0)
    assert p.route(RequestInfo("long", 50_000), 1.0) in {"w2", "w3"}


def test_static_buckets_reject_more_buckets_than_workers(model):
    p = with_workers(model, "static_buckets", ["a", "b"], {"boundaries": (1000, 10000)})
    with pytest.raises(ValueError, match="3 buckets need at least 3 workers, have 2"):
        p.route(RequestInfo("r", 10), 0.0)
    assert p.layout() is None
    p.add_worker("c", 0.0)
    assert p.route(RequestInfo("r", 10), 0.0) == "a"


def test_static_buckets_take_a_count_per_bucket(model):
    names = [f"w{i}" for i in range(5)]
    p = with_workers(model, "static_buckets", names, {"boundaries": (1000,), "instances": (4, 1)})
    assert [s.workers for s in p.layout().stages] == [("w0", "w1", "w2", "w3"), ("w4",)]
    assert {p.route(RequestInfo(f"s{i}", 10), 0.0) for i in range(8)} == {"w0", "w1", "w2", "w3"}
    assert p.route(RequestInfo("long", 5000), 0.0) == "w4"
    wrong = with_workers(model, "static_buckets", names, {"boundaries": (1000,), "instances": (3, 1)})
    with pytest.raises(ValueError, match=r"3\+1 = 4 workers per bucket, have 5"):
        wrong.route(RequestInfo("r", 10), 0.0)
    with pytest.raises(ValueError, match="2 buckets need 2 counts"):
        with_workers(model, "static_buckets", names, {"boundaries": (1000,), "instances": (5,)})


def llumnix_with_three_requests(model, snap, overrides=None):
    """w0 holds r-a, r-b, r-c with 50, 5 and 20 generated tokens."""
    p = with_workers(model, "llumnix", ["w0", "w1"], overrides)
    p.on_load([snap("w0"), snap("w1", running=100, ctx=3000)], 0.0)
    for rid, generated in [("r-a", 50), ("r-b", 5), ("r-c", 20)]:
        assert p.route(RequestInfo(rid, 1000), 0.0) == "w0"
        p.on_progress(rid, generated, 0.1)
    return p


def test_llumnix_migrates_the_shortest_running_from_busiest_to_idlest(model, snap):
    p = llumnix_with_three_requests(model, snap)
    p.on_load([snap("w0", running=80, ctx=4000), snap("w1", running=2)], 1.0)
    assert p.tick(1.0) == [Migration("r-b", "w0", "w1", "llumnix")]
    # Proposed and not yet confirmed: not proposed again; confirmed: the next shortest.
    assert p.tick(1.5) == [Migration("r-c", "w0", "w1", "llumnix")]
    p.on_migrated(Migration("r-b", "w0", "w1", "llumnix"), 2.0)
    assert p.book.requests["r-b"].worker == "w1"


def test_llumnix_leaves_a_small_gap_alone(model, snap):
    p = llumnix_with_three_requests(model, snap)
    p.on_load([snap("w0", running=30, ctx=3000), snap("w1", running=20, ctx=3000)], 1.0)
    assert p.tick(1.0) == []  # gap 0.075 of capacity < 0.2
    q = llumnix_with_three_requests(model, snap, {"migration": False})
    q.on_load([snap("w0", running=80, ctx=4000), snap("w1")], 1.0)
    assert q.tick(1.0) == []
