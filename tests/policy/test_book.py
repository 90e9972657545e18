"""The load book: snapshot + what the policy did since, so bursts do not herd."""

from __future__ import annotations

import pytest

from l4_sglang.policy import Migration, RequestInfo, make_policy


@pytest.fixture
def policy(model):
    p = make_policy("least_load", model)
    for w in ("a", "b", "c", "d"):
        p.add_worker(w, 0.0)
    return p


def test_burst_between_polls_spreads(policy, snap):
    policy.on_load([snap(w, running=4) for w in "abcd"], 0.0)
    picks = [policy.route(RequestInfo(f"r{i}", 1000), 0.1) for i in range(8)]
    assert sorted(picks) == ["a", "a", "b", "b", "c", "c", "d", "d"]


def test_load_follows_the_request_lifecycle(policy, snap):
    book = policy.book
    policy.on_load([snap(w) for w in "abcd"], 0.0)
    assert policy.route(RequestInfo("r", 1000, 100), 0.1) == "a"
    x = book.load("a")
    assert (x.running, x.queued_requests, x.queued_tokens, x.kv_tokens) == (0, 1, 1000, 0)
    policy.on_progress("r", 10, 0.2)
    x = book.load("a")
    assert (x.running, x.queued_requests, x.queued_tokens, x.kv_tokens, x.max_kv) == (1, 0, 0, 1010, 1010)
    policy.on_progress("r", 30, 0.3)
    assert book.load("a").kv_tokens == 1030
    # A fresh snapshot replaces the estimate; later changes add to it.
    policy.on_load([snap("a", running=3, ctx=2000)], 0.4)
    assert book.load("a").kv_tokens == 6000
    policy.on_progress("r", 40, 0.5)
    assert book.load("a").kv_tokens == 6010
    policy.on_finish("r", 0.6)
    assert book.load("a").kv_tokens == 6010 - 1040 and book.load("a").running == 2
    assert "r" not in book.requests


def test_migration_moves_the_booking(policy):
    book = policy.book
    worker = policy.route(RequestInfo("r", 5000), 0.0)
    policy.on_progress("r", 100, 0.1)
    target = "d" if worker != "d" else "c"
    policy.on_migrated(Migration("r", worker, target, "test"), 0.2)
    assert book.load(worker).running == 0 and book.load(worker).kv_tokens == 0
    x = book.load(target)
    assert (x.queued_requests, x.queued_tokens) == (1, 5100)  # recomputes its whole context
    policy.on_progress("r", 101, 0.3)
    x = book.load(target)
    assert (x.running, x.kv_tokens, x.queued_requests) == (1, 5101, 0)
    assert book.requests["r"].worker == target


def test_unknown_events_are_ignored(policy, snap):
    assert policy.on_progress("ghost", 5, 0.0) == []
    policy.on_finish("ghost", 0.0)
    policy.on_abort("ghost", 0.0)
    policy.on_migrated(Migration("ghost", "a", "b", "test"), 0.0)
    policy.on_load([snap("stranger", running=5)], 0.0)
    assert "stranger" not in policy.book.workers


def test_rids_map_to_distinct_ints(policy):
    for i in range(5):
        policy.route(RequestInfo(f"r{i}", 100), 0.0)
    iids = [policy.book.requests[f"r{i}"].iid for i in range(5)]
    assert iids == sorted(set(iids)) and all(i >= 0 for i in iids)
    assert all(policy.book.by_iid[b.iid] is b for b in policy.book.requests.values())
