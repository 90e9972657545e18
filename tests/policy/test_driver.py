"""`PolicyDriver`: the protocol the router and the simulator both drive policies through."""

from __future__ import annotations

import pytest

from l4_sglang.policy import Migration, Policy, RequestInfo
from l4_sglang.policy.driver import PolicyDriver


class Scripted(Policy):
    """Routes to `home`; proposes whatever the test queues in `proposals`; counts its calls."""

    NAME = "scripted"

    def __init__(self, model, home: str = "a") -> None:
        super().__init__(None, model)
        self.home = home
        self.proposals: list[Migration] = []
        self.routes: list[RequestInfo] = []
        self.reroutes: list[RequestInfo] = []
        self.progress: list[tuple[str, int]] = []
        self.migrated: list[Migration] = []

    def route(self, req, now):
        self.routes.append(req)
        self.book.route(req, self.home, now)
        return self.home

    def reroute(self, req, now):
        self.reroutes.append(req)
        worker = self.healthy_workers()[0]
        self.book.route(req, worker, now)
        return worker

    def on_progress(self, rid, generated_tokens, now):
        super().on_progress(rid, generated_tokens, now)
        self.progress.append((rid, generated_tokens))
        return self._take()

    def tick(self, now):
        super().tick(now)
        return self._take()

    def on_migrated(self, m, now):
        super().on_migrated(m, now)
        self.migrated.append(m)

    def _take(self) -> list[Migration]:
        out, self.proposals = self.proposals, []
        return out


@pytest.fixture
def setup(model):
    policy = Scripted(model)
    driver = PolicyDriver(policy)
    for w in ("a", "b", "c"):
        driver.worker_added(w, 0.0)
    driver.arrive(RequestInfo("r", 100, max_new_tokens=50, prefix_hashes=(7,)), 0.0)
    return policy, driver


def test_stale_proposals_are_dropped(setup):
    policy, driver = setup
    wrong_source = Migration("r", "b", "c", "x")
    unknown = Migration("nobody", "a", "b", "x")
    good = Migration("r", "a", "b", "x")
    policy.proposals = [wrong_source, unknown, good, Migration("r", "a", "c", "again")]
    assert driver.progress("r", 1, 1.0) == [good]  # one move at a time per request
    assert driver.current(good)
    policy.proposals = [Migration("r", "a", "c", "while moving")]
    assert driver.tick(2.0) == []
    driver.finish("r", 3.0)
    assert not driver.current(good)  # gone since it was handed out
    policy.proposals = [Migration("r", "a", "c", "late")]
    assert driver.tick(4.0) == []


def test_a_refused_migration_leaves_the_request_where_it_was(setup):
    policy, driver = setup
    m = Migration("r", "a", "b", "x")
    policy.proposals = [m]
    assert driver.progress("r", 5, 1.0) == [m]
    driver.migration_refused(m, 1.0)
    assert driver.worker_of("r") == "a" and policy.book.requests["r"].worker == "a"
    assert policy.migrated == [] and not driver.current(m)
    again = Migration("r", "a", "c", "y")  # free to be proposed again
    policy.proposals = [again]
    assert driver.tick(2.0) == [again]


def test_the_generated_token_base_is_carried_across_migrations_and_failovers(setup):
    policy, driver = setup
    m = Migration("r", "a", "b", "x")
    policy.proposals = [m]
    driver.progress("r", 10, 1.0)
    driver.migration_accepted(m, 1.0)
    assert driver.worker_of("r") == "b" and policy.book.requests["r"].worker == "b"
    driver.progress("r", 30, 2.0)
    assert policy.progress[-1] == ("r", 30)  # a migration keeps the booking: counts go on
    target = driver.failover("r", 30, 3.0)
    rerouted = policy.reroutes[-1]
    assert (rerouted.rid, rerouted.prompt_tokens, rerouted.max_new_tokens) == ("r", 130, 20)
    assert rerouted.prefix_hashes == (7,)
    driver.migration_accepted(Migration("r", "b", target, "failover"), 3.0)
    driver.progress("r", 42, 4.0)
    assert policy.progress[-1] == ("r", 12)  # booked afresh at 130 tokens: counted from there


def test_a_failover_is_not_a_second_arrival(setup):
    policy, driver = setup
    driver.progress("r", 3, 1.0)
    driver.worker_removed("a", 2.0)
    assert driver.failover("r", 3, 2.0) == "b"
    assert len(policy.routes) == 1 and len(policy.reroutes) == 1
    assert policy.book.requests["r"].worker == "b"
    with pytest.raises(ValueError, match="already in flight"):
        driver.arrive(RequestInfo("r", 100), 3.0)


def test_the_default_reroute_routes_and_books_once(model):
    class Plain(Policy):
        NAME = "plain"

        def route(self, req, now):
            worker = self.healthy_workers()[-1]
            self.book.route(req, worker, now)
            return worker

    driver = PolicyDriver(Plain(None, model))
    driver.worker_added("a", 0.0)
    driver.worker_added("b", 0.0)
    assert driver.arrive(RequestInfo("r", 100), 0.0) == "b"
    driver.worker_removed("b", 1.0)
    assert driver.failover("r", 5, 1.0) == "a"
    book = driver.policy.book
    assert list(book.requests) == ["r"] and book.requests["r"].prompt == 105


def test_removing_a_worker_tells_the_policy_and_names_its_requests(setup):
    policy, driver = setup
    driver.arrive(RequestInfo("s", 10), 0.0)
    policy.home = "b"
    driver.arrive(RequestInfo("t", 10), 0.0)
    m = Migration("t", "b", "a", "x")
    policy.proposals = [m]
    assert driver.progress("t", 1, 1.0) == [m]
    assert driver.worker_removed("a", 2.0) == ["r", "s"]
    assert "a" not in policy.book.workers
    assert driver.failover("r", 0, 2.0) == "b"
    assert driver.worker_removed("b", 3.0) == ["r", "t"]
    driver.abort("t", 3.0)
    assert "t" not in driver and "t" not in policy.book.requests


def test_of_wraps_a_policy_and_keeps_a_driver(model):
    driver = PolicyDriver(Scripted(model))
    assert PolicyDriver.of(driver) is driver
    assert PolicyDriver.of(driver.policy).policy is driver.policy
