"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it: of the
replicas, the one holding the Lease reconciles; the others keep their watches and caches warm and take
over once the holder stops renewing for the Lease's duration.

Why our own loop on ``kube`` rather than the kubernetes client's leaderelection module or kopf's peering:
the client's module runs its callbacks on its own thread and leaves the renewal on a failed write to
chance (and makes its requests outside ``kube``, the one module that calls the API); kopf's peering
pauses handlers (our watches must keep feeding the cache) and needs its own cluster-wide CRD.

Expiry is judged by this replica's own clock, from when it last saw the Lease record change (as
client-go does), never by comparing the holder's renewTime with the local time: clocks may disagree.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from assay_operator import kube

#: client-go's defaults: a lease of 15 s, renewed every 2 s; a leader that could not renew for 10 s stops.
LEASE_SECONDS, RENEW_DEADLINE_SECONDS, RETRY_SECONDS = 15, 10.0, 2.0


def _micro_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Elector:
    namespace: str
    name: str
    identity: str
    logger: logging.Logger
    lease_seconds: int = LEASE_SECONDS
    renew_deadline: float = RENEW_DEADLINE_SECONDS
    retry: float = RETRY_SECONDS
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    #: (holderIdentity, renewTime) last seen, and when (by ``clock``) it was first seen so
    _observed: tuple[Any, Any] | None = None
    _observed_at: float = 0.0

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this replica holds the Lease afterwards."""
        now, stamp = self.clock(), _micro_time(self.wall())
        lease = kube.get_lease(self.namespace, self.name)
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                             "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}}
            kube.create_lease(self.namespace, body)
            self._observed, self._observed_at = (self.identity, stamp), now
            return True
        spec = dict(lease.get("spec") or {})
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = spec.get("leaseDurationSeconds") or self.lease_seconds
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # another replica leads, and renewed within its lease
        ours = holder == self.identity
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=self.lease_seconds, renewTime=stamp,
                    acquireTime=spec.get("acquireTime") if ours else stamp,
                    leaseTransitions=int(spec.get("leaseTransitions") or 0) + (0 if ours or not holder else 1))
        lease["spec"] = spec
        kube.replace_lease(self.namespace, lease)  # at the resourceVersion read: a rival's write wins
        self._observed, self._observed_at = (self.identity, stamp), now
        return True

    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except kube.Conflict:
            return False  # another replica wrote first; read again next time
        except Exception as exc:  # noqa: BLE001 - the API server may be briefly away; the deadline decides
            self.logger.warning("leader election: could not read or write Lease %s/%s: %s",
                                self.namespace, self.name, exc)
            return False

    def run(self, started: Callable[[], None], stopped: Callable[[], None], stop: threading.Event) -> None:
        """Wait to lead, call ``started``, renew until ``stop`` is set (then give the Lease up) or until
        renewing failed for renew_deadline (then call ``stopped``: this replica must stop acting)."""
        while not self._attempt():
            if stop.wait(self.retry):
                return
        self.logger.info("leader election: %s leads (Lease %s/%s)", self.identity, self.namespace, self.name)
        started()
        renewed = self.clock()
        while not stop.wait(self.retry):
            if self._attempt():
                renewed = self.clock()
            elif self.clock() - renewed > self.renew_deadline:
                self.logger.error("leader election: %s could not renew Lease %s/%s for %.0f s; stopping",
                                  self.identity, self.namespace, self.name, self.renew_deadline)
                stopped()
                return
        self.release()

    def release(self) -> None:
        """Give the Lease up at shutdown, so a follower takes over at once instead of after its duration."""
        try:
            lease = kube.get_lease(self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"] = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1}
            kube.replace_lease(self.namespace, lease)
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            self.logger.warning("leader election: could not release Lease %s/%s: %s", self.namespace, self.name, exc)
