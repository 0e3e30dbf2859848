"""Prometheus metrics of the operator, served on ``ASSAY_OPERATOR_METRICS_PORT`` (default 8000) at ``/metrics``.

Names (all prefixed ``assay_operator_``):

``assay_operator_evaluationjobs{namespace, phase}``                    gauge
    EvaluationJobs by phase, as of their last reconcile by this process (deleted jobs drop out).
``assay_operator_reconcile_duration_seconds``                          histogram
    Time of one reconcile (on a watched change of the job, its child Jobs, their pods or Events, or when
    the job's timer is due); ``_count`` counts reconciles.
``assay_operator_reconcile_errors_total{exception}``                   counter
    Reconciles that raised, by exception class (logged, posted as a Warning Event, retried with
    exponential backoff or at the next change).
``assay_operator_leader{identity}``                                     gauge
    1 while this replica holds the leader-election Lease and reconciles, 0 while it follows (1 without
    election).
``assay_operator_evaluationjob_shard_retries{namespace, name}``        gauge
    ppl pods of the job's current attempt that failed and were retried (the ppl Job's ``status.failed``).
``assay_operator_evaluationjob_samples_per_second{namespace, name}``   gauge
    Inference throughput summed over the job's ppl workers (0 once the ppl phase is over).

Per-job series exist while the job does; the process's own ``process_*``/``python_*`` series come too.
Only ``prometheus_client`` is used: no API calls and no storage here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "assay_operator_"

RECONCILE_SECONDS = Histogram(
    f"{PREFIX}reconcile_duration_seconds", "Time of one reconcile of an EvaluationJob.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
RECONCILE_ERRORS = Counter(
    f"{PREFIX}reconcile_errors", "Reconciles that raised an exception (retried with backoff).", ["exception"])
LEADER = Gauge(f"{PREFIX}leader", "1 while this replica leads (reconciles), 0 while it follows.", ["identity"])


class _JobState:
    """What the last reconcile of each EvaluationJob saw, keyed by (namespace, name)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}

    def set(self, namespace: str, name: str, **fields: Any) -> None:
        with self.lock:
            self.jobs.setdefault((namespace, name), {}).update(fields)

    def forget(self, namespace: str, name: str) -> None:
        with self.lock:
            self.jobs.pop((namespace, name), None)

    def snapshot(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self.lock:
            return {k: dict(v) for k, v in self.jobs.items()}


STATE = _JobState()


class _JobsCollector(Collector):
    """Computes the per-phase and per-job gauges at scrape time from ``STATE``."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = STATE.snapshot()
        phases = GaugeMetricFamily(f"{PREFIX}evaluationjobs", "EvaluationJobs by phase.",
                                   labels=["namespace", "phase"])
        counts: dict[tuple[str, str], int] = {}
        for (namespace, _), fields in snap.items():
            if fields.get("phase"):
                key = (namespace, str(fields["phase"]))
                counts[key] = counts.get(key, 0) + 1
        for (namespace, phase), n in sorted(counts.items()):
            phases.add_metric([namespace, phase], n)
        yield phases
        retries = GaugeMetricFamily(f"{PREFIX}evaluationjob_shard_retries",
                                    "ppl pods of the current attempt that failed and were retried.",
                                    labels=["namespace", "name"])
        rate = GaugeMetricFamily(f"{PREFIX}evaluationjob_samples_per_second",
                                 "Inference throughput of the job's ppl workers (samples/s).",
                                 labels=["namespace", "name"])
        for (namespace, name), fields in sorted(snap.items()):
            retries.add_metric([namespace, name], float(fields.get("retries") or 0))
            rate.add_metric([namespace, name], float(fields.get("samples_per_second") or 0.0))
        yield retries
        yield rate

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


REGISTRY.register(_JobsCollector())

_server_lock = threading.Lock()
_server_port: int | None = None


def serve(port: int, logger: logging.Logger | None = None) -> int | None:
    """Start the /metrics HTTP server once per process (a restarted in-process operator reuses it)."""
    global _server_port
    with _server_lock:
        if port <= 0 or _server_port is not None:
            return _server_port
        try:
            start_http_server(port)
        except OSError as exc:  # e.g. the port is taken: metrics are not worth stopping the operator for
            (logger or logging.getLogger(__name__)).warning("metrics endpoint on port %d not started: %s",
                                                            port, exc)
            return None
        _server_port = port
        return port


@contextmanager
def timed_reconcile() -> Iterator[None]:
    """Time a reconcile and count it as an error when it raises (the exception propagates)."""
    start = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        RECONCILE_ERRORS.labels(type(exc).__name__).inc()
        raise
    finally:
        RECONCILE_SECONDS.observe(time.perf_counter() - start)


def observe(namespace: str, name: str, phase: str, status: Mapping[str, Any] | None = None,
            ppl_job: Mapping[str, Any] | None = None) -> None:
    """Record what one reconcile saw: the phase, and when known the throughput and the ppl retries."""
    fields: dict[str, Any] = {"phase": phase}
    if status is not None:
        fields["samples_per_second"] = float(((status.get("progress") or {}).get("samplesPerSecond")) or 0.0)
    if ppl_job is not None:
        fields["retries"] = int(((ppl_job.get("status") or {}).get("failed")) or 0)
    STATE.set(namespace, name, **fields)


def forget(namespace: str, name: str) -> None:
    """The EvaluationJob is gone: drop its series."""
    STATE.forget(namespace, name)
