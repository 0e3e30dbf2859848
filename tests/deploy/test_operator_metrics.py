"""The operator's Prometheus metrics: the documented names exist with the right labels and values,
the /metrics endpoint serves them, and the settings the chart passes (ports, log format) are typed."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import REGISTRY, generate_latest
from pydantic import ValidationError

from assay_operator import metrics
from assay_operator.settings import Settings

DOCUMENTED = ("assay_operator_evaluationjobs", "assay_operator_reconcile_duration_seconds",
              "assay_operator_reconcile_errors_total", "assay_operator_evaluationjob_shard_retries",
              "assay_operator_evaluationjob_samples_per_second")


@pytest.fixture(autouse=True)
def clean_state():
    metrics.STATE.jobs.clear()
    yield
    metrics.STATE.jobs.clear()


def sample(name: str, labels: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_jobs_by_phase_retries_and_throughput():
    metrics.observe("evals", "a", "Running", {"progress": {"samplesPerSecond": 12.5}},
                    {"status": {"failed": 2}})
    metrics.observe("evals", "b", "Running", {"progress": {}}, None)
    metrics.observe("evals", "c", "Succeeded", {})
    assert sample("assay_operator_evaluationjobs", {"namespace": "evals", "phase": "Running"}) == 2
    assert sample("assay_operator_evaluationjobs", {"namespace": "evals", "phase": "Succeeded"}) == 1
    assert sample("assay_operator_evaluationjob_shard_retries", {"namespace": "evals", "name": "a"}) == 2
    assert sample("assay_operator_evaluationjob_samples_per_second", {"namespace": "evals", "name": "a"}) == 12.5
    metrics.observe("evals", "a", "Succeeded", {})  # finished: throughput drops to 0, retries are kept
    assert sample("assay_operator_evaluationjob_samples_per_second", {"namespace": "evals", "name": "a"}) == 0
    assert sample("assay_operator_evaluationjob_shard_retries", {"namespace": "evals", "name": "a"}) == 2
    metrics.forget("evals", "a")
    assert sample("assay_operator_evaluationjob_shard_retries", {"namespace": "evals", "name": "a"}) is None
    assert sample("assay_operator_evaluationjobs", {"namespace": "evals", "phase": "Succeeded"}) == 1


def test_reconcile_latency_and_errors():
    before = sample("assay_operator_reconcile_duration_seconds_count", {}) or 0
    errors = sample("assay_operator_reconcile_errors_total", {"exception": "RuntimeError"}) or 0
    with metrics.timed_reconcile():
        pass
    with pytest.raises(RuntimeError), metrics.timed_reconcile():
        raise RuntimeError("api down")
    assert sample("assay_operator_reconcile_duration_seconds_count", {}) == before + 2
    assert sample("assay_operator_reconcile_errors_total", {"exception": "RuntimeError"}) == errors + 1


def test_documented_names_are_exported_and_in_the_docs():
    metrics.observe("evals", "a", "Running", {}, {"status": {}})
    with metrics.timed_reconcile():
        pass
    text = generate_latest(REGISTRY).decode()
    for name in DOCUMENTED:
        assert f"\n{name}" in text or text.startswith(name) or f"# TYPE {name.removesuffix('_total')}" in text, name
        assert name.removesuffix("_total") in (metrics.__doc__ or ""), f"{name} is not documented"


def test_metrics_endpoint_serves_once_per_process():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if metrics._server_port is None:
        assert metrics.serve(port) == port
    served = metrics._server_port
    assert metrics.serve(port + 1) == served  # a second start (an in-process restart) reuses the first
    metrics.observe("evals", "x", "Pending", {})
    body = urllib.request.urlopen(f"http://127.0.0.1:{served}/metrics", timeout=5).read().decode()
    assert 'assay_operator_evaluationjobs{namespace="evals",phase="Pending"} 1.0' in body
    assert metrics.serve(0) == served


def test_settings_for_ports_and_logs_fail_with_the_variable_name(monkeypatch):
    assert Settings().metrics_port == 8000 and Settings().log_format == "text"
    monkeypatch.setenv("ASSAY_OPERATOR_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match="log_format"):
        Settings()
    monkeypatch.setenv("ASSAY_OPERATOR_LOG_FORMAT", "json")
    monkeypatch.setenv("ASSAY_OPERATOR_METRICS_PORT", "0")
    assert Settings().metrics_port == 0 and Settings().log_format == "json"
