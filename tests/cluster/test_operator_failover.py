"""Two operator replicas through the chart, one leading on a coordination.k8s.io Lease (issue 23)."""

from __future__ import annotations

import time

import pytest

from tests.cluster.conftest import OPERATOR_NS, Api, evaljob, wait_for
from tests.cluster.test_evaluationjob import apply, result_ids, running_ppl_pods, slow

pytestmark = pytest.mark.cluster

#: The issue's target: a new leader acts within 20 s of the old one's death (Lease of 15 s, retry 2 s).
FAILOVER_SECONDS = 20


def test_killing_the_leader_mid_job_leaves_a_job_that_succeeds_with_every_sample_once(operator, kubectl,
                                                                                        api: Api, ns, inputs, s3_env):
    pods = operator.pods()
    assert len(pods) == operator.REPLICAS, [p["metadata"]["name"] for p in pods]
    first = wait_for(operator.leader, "a replica to hold the Lease", timeout=60)
    assert first in {p["metadata"]["name"] for p in pods}

    manifest = evaljob("failover", inputs, s3_env, **slow())
    apply(kubectl, ns, manifest)
    wait_for(lambda: running_ppl_pods(api, "failover"), "a running ppl pod", timeout=120)
    operator.past.append(operator._current_logs())  # the killed pod's log goes with it
    killed = time.monotonic()
    # death, not a shutdown: no SIGTERM handler runs, so the Lease is not given up
    kubectl("delete", "pod", "-n", OPERATOR_NS, first, "--grace-period=0", "--force", "--wait=false")
    second = wait_for(lambda: (lambda h: h if h and h != first else None)(operator.leader()),
                      "another replica to take the Lease", timeout=FAILOVER_SECONDS + 10)
    assert time.monotonic() - killed <= FAILOVER_SECONDS + 2, "the follower took over within the lease"
    assert second != first

    st = api.wait_phase("failover", ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    assert sorted(api.jobs()) == ["failover-cmp", "failover-ppl", "failover-resolve"], "no duplicate children"
    ids = result_ids(manifest["spec"]["output"]["uri"])
    assert len(ids) == len(set(ids)) == int(inputs["samples"])
    wait_for(lambda: len([p for p in operator.pods() if not p["metadata"].get("deletionTimestamp")])
             == operator.REPLICAS, "the Deployment to replace the killed replica", timeout=120)
