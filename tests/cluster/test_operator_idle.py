"""The operator at rest on a real control plane (issue 23): its requests while nothing changes, counted
in the API server's audit log by bench/operator_scale.py. No kubelet: the jobs' pods stay Pending, as
while GPU nodes are being provisioned; this module starts its own control plane, not the node.

Before issue 23 a resync loop read every unfinished job, its Jobs, pods and Events every 10 s: 0.94
requests per job per second at 200 queued jobs (bench/RESULTS.md)."""

from __future__ import annotations

import pytest

from bench.operator_scale import BIN, IDLE_TARGET, measure
from tests.cluster.controlplane import BINARIES

pytestmark = pytest.mark.cluster

JOBS, IDLE_SECONDS = 200, 30


def test_an_idle_operator_sends_almost_nothing(tmp_path):
    missing = [b for b in BINARIES if not (BIN / b).is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: run `bash scripts/install-kube.sh`")
    got = measure(tmp_path, JOBS, IDLE_SECONDS, deadline=300)
    assert got["idle_requests_per_job_s"] <= IDLE_TARGET, got["idle_by_kind"]
    # starting a job: its resolve Job, its first status, its phase Event; no reads (they come from watches)
    assert got["requests_per_job"] < 4, got["burst_by_kind"]
    assert not [kind for kind in got["burst_by_kind"] if kind.startswith(("get ", "list "))], got["burst_by_kind"]
