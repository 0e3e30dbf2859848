"""assay_operator.leader: one of two replicas leads on a coordination.k8s.io Lease (issue 23), against an
in-memory Lease with resourceVersions (a rival's write in between is a Conflict) and a fake clock."""

from __future__ import annotations

import copy
import datetime as dt
import logging
import threading

import pytest

from assay_operator import kube, leader

NS, NAME = "assay-system", "assay-operator"
LOG = logging.getLogger("test")


class Leases:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lease: dict | None = None
        self.version = 0
        self.down = False
        for fn in ("get_lease", "create_lease", "replace_lease"):
            monkeypatch.setattr(kube, fn, getattr(self, fn))

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("the API server is away")

    def get_lease(self, ns, name):
        self._check()
        return copy.deepcopy(self.lease)

    def create_lease(self, ns, body):
        self._check()
        if self.lease is not None:
            raise kube.Conflict("exists")
        return self._store(body)

    def replace_lease(self, ns, body):
        self._check()
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise kube.Conflict("modified")
        return self._store(body)

    def _store(self, body):
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    @property
    def holder(self):
        return (self.lease or {}).get("spec", {}).get("holderIdentity")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def leases(monkeypatch):
    return Leases(monkeypatch)


def elector(name: str, clock: Clock) -> leader.Elector:
    return leader.Elector(NS, NAME, name, LOG, clock=clock,
                          wall=lambda: dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=clock.t))


def test_one_replica_leads_and_the_other_follows_while_it_renews(leases):
    clock = Clock()
    a, b = elector("a", clock), elector("b", clock)
    assert a.try_acquire_or_renew() and leases.holder == "a"
    for _ in range(20):  # 40 s of renewals: b never takes over
        clock.t += 2
        assert not b.try_acquire_or_renew()
        assert a.try_acquire_or_renew()
    assert leases.holder == "a" and leases.lease["spec"]["leaseTransitions"] == 0


def test_a_dead_leader_is_replaced_after_the_lease_duration_by_the_followers_own_clock(leases):
    clock = Clock()
    a, b = elector("a", clock), elector("b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b sees the record now
    clock.t += leader.LEASE_SECONDS - 1  # a died: no renewal since
    assert not b.try_acquire_or_renew(), "not before the lease's duration has passed on b's clock"
    clock.t += 2
    assert b.try_acquire_or_renew() and leases.holder == "b"
    assert leases.lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire_or_renew(), "the old leader, back, follows"


def test_a_rival_write_in_between_is_a_conflict_not_two_leaders(leases, monkeypatch):
    clock = Clock()
    a, b = elector("a", clock), elector("b", clock)
    assert a.try_acquire_or_renew()
    real_get = leases.get_lease

    def stale_then_rival(ns, name):
        seen = real_get(ns, name)
        leases._store({**leases.lease, "spec": {**leases.lease["spec"], "holderIdentity": "c"}})
        return seen

    monkeypatch.setattr(kube, "get_lease", stale_then_rival)
    clock.t += 100  # a's lease looks expired to b
    assert not b._attempt() and leases.holder == "c"


def test_a_leader_that_cannot_renew_stops(leases):
    clock = Clock()
    a = elector("a", clock)
    started, stopped, stop = threading.Event(), threading.Event(), threading.Event()

    def on_started():
        started.set()
        leases.down = True  # the API server goes away just after a took the lead

    def tick(_timeout=None):  # each retry period is that much of the fake clock
        clock.t += a.retry
        return False

    stop.wait = tick
    a.run(on_started, stopped.set, stop)
    assert started.is_set() and stopped.is_set()
    assert clock.t - 1000.0 <= a.renew_deadline + 2 * a.retry, "it stops once renew_deadline has passed"


def test_a_leader_that_shuts_down_gives_the_lease_up(leases):
    clock = Clock()
    a = elector("a", clock)
    stop = threading.Event()
    stop.set()
    a.run(lambda: None, lambda: None, stop)  # leads, then is told to stop at once
    assert leases.holder is None
    assert elector("b", clock).try_acquire_or_renew(), "a released Lease is taken at once"
