"""`Policy.may_move`: whether a policy may ever propose moving a request it just routed.

A "no" lets the router send a short request that does not stream as one plain
(non-streaming) worker request; a "yes" keeps it on streamed legs, so every
move the policy could propose stays possible.
"""

from __future__ import annotations

import math

import pytest

from l4_sglang.policy import POLICIES, RequestInfo, make_policy
from l4_sglang.policy import l4 as l4_module
from l4_sglang.policy.base import Migration, Policy

NEVER_MOVE = {"round_robin", "random", "power_of_two", "least_load", "static_buckets"}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_answers(model, name):
    p = make_policy(name, model, None)
    for w in ("a", "b", "c", "d"):
        p.add_worker(w, 0.0)
    p.route(RequestInfo("r", 100, max_new_tokens=64), 0.0)
    assert p.may_move("r") is (name not in NEVER_MOVE)


def test_llumnix_without_migration_moves_nothing(model):
    p = make_policy("llumnix", model, {"migration": False})
    p.add_worker("a", 0.0)
    p.route(RequestInfo("r", 100), 0.0)
    assert p.may_move("r") is False


def test_a_policy_that_proposes_on_progress_or_tick_may_move(model):
    class OnProgress(Policy):
        NAME = "on_progress"

        def route(self, req, now):
            self.book.route(req, "a", now)
            return "a"

        def on_progress(self, rid, generated_tokens, now) -> list[Migration]:
            return super().on_progress(rid, generated_tokens, now)

    class OnTick(OnProgress):
        on_progress = Policy.on_progress

        def tick(self, now) -> list[Migration]:
            return super().tick(now)

    class Neither(OnProgress):
        on_progress = Policy.on_progress

    assert OnProgress(None, model).may_move("r") is True
    assert OnTick(None, model).may_move("r") is True
    assert Neither(None, model).may_move("r") is False


def _stage_of(view, worker):
    (k,) = [k for k, s in enumerate(view.stages) if worker in s.workers]
    return k


def test_l4_one_worker_moves_nothing(model):
    p = make_policy("l4", model, None)
    p.add_worker("a", 0.0)
    p.route(RequestInfo("r", 100, max_new_tokens=4), 0.0)
    p.route(RequestInfo("open", 100), 0.0)
    assert not p.may_move("r") and not p.may_move("open") and not p.may_move("unknown")


def test_l4_a_stage_of_several_workers_may_balance_all_but_the_shortest(drive):
    p = drive("l4", 10.0).policy  # warm-up: one stage of 8 workers
    assert len(p.layout().stages) == 1
    floor = p.config.pair_min_remaining
    p.route(RequestInfo("short", 100, max_new_tokens=floor - 1), 10.0)
    p.route(RequestInfo("enough", 100, max_new_tokens=floor), 10.0)
    p.route(RequestInfo("open", 100), 10.0)
    assert not p.may_move("short")
    assert p.may_move("enough") and p.may_move("open")


def test_l4_in_stage_balance_leaves_requests_near_their_end(drive, monkeypatch):
    # What the in-stage pairing is offered: every running request with pair_min_remaining tokens
    # or more to go, none with fewer.
    offered = []

    def capture(models, loads, lists, *args):
        offered.extend(iid for per_worker in lists for iid, _, _ in per_worker)
        return None

    monkeypatch.setattr(l4_module, "pick_migration", capture)
    p = drive("l4", 10.0).policy
    p.route(RequestInfo("near-end", 100, max_new_tokens=p.config.pair_min_remaining - 1), 10.0)
    p.route(RequestInfo("long", 100, max_new_tokens=500), 10.0)
    for rid in ("near-end", "long"):
        p.on_progress(rid, 1, 10.1)  # decoding: 1 token out
    p.tick(10.0 + 2 * p.config.balance_interval_s)
    iids = {p.book.requests[r].iid: r for r in ("near-end", "long")}
    assert {iids[i] for i in offered if i in iids} == {"long"}


def test_l4_single_worker_stages_move_what_can_cross_the_bound(drive):
    run = drive("l4", 120.0, workers=2)
    p, t = run.policy, run.now
    view = p.layout()
    assert [len(s.workers) for s in view.stages] == [1, 1]  # chats and documents, one worker each
    hi = view.stages[0].hi_tokens
    p.route(RequestInfo("fits", 500, max_new_tokens=4), t)
    p.route(RequestInfo("at-bound", 500, max_new_tokens=math.floor(hi * 1.1) - 500), t)
    p.route(RequestInfo("crosses", 500, max_new_tokens=math.floor(hi * 1.1) - 499), t)
    p.route(RequestInfo("unbounded", 500), t)
    p.route(RequestInfo("last-stage", 60_000, max_new_tokens=100_000), t)
    for rid in ("fits", "at-bound", "crosses", "unbounded"):
        assert _stage_of(view, p.book.requests[rid].worker) == 0
    assert _stage_of(view, p.book.requests["last-stage"].worker) == 1
    assert not p.may_move("fits") and not p.may_move("at-bound")
    assert p.may_move("crosses") and p.may_move("unbounded")
    assert not p.may_move("last-stage")
    # What may_move says no to is never proposed as it grows to its peak (the bound with hysteresis).
    for n in (1, 100, math.floor(hi * 1.1) - 500):
        assert p.on_progress("at-bound", n, t + n) == []


def test_l4_migration_off_moves_nothing(drive):
    p = drive("l4", 10.0, {"migration": False}).policy
    p.route(RequestInfo("r", 100), 10.0)
    assert not p.may_move("r")
