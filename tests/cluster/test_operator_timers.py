"""What no watch shows reaches status without a resync loop (issue 23): the operator has none, and a
job whose objects stop changing is reconciled again only by its own timer (assay_operator.due).

The other two cases of the issue run in the default install, which has no resync either:
test_evaluationjob.py::test_unknown_image_fails_fast_with_image_pull_back_off (a pod's ImagePullBackOff,
failed after jobDefaults.failFastSeconds) and
test_dynamics.py::test_pods_that_can_never_be_created_fail_at_the_pending_deadline (a pending deadline).
"""

from __future__ import annotations

import pytest

from tests.cluster.conftest import Api, evaljob, wait_for
from tests.cluster.test_evaluationjob import apply

pytestmark = pytest.mark.cluster

STALL = 20


def test_a_stalled_job_turns_shards_progressing_false_with_nothing_changing(operator, kubectl, api: Api, ns,
                                                                            inputs, s3_env):
    """ShardsProgressing turned False only when the resync loop happened to look after stall_seconds;
    a ppl worker that hangs changes no watched object, so the job's stall timer must do it."""
    hang = [{"name": "ASSAY_TEST_JITTER", "value": "1"}, {"name": "ASSAY_TEST_PREDICT_DELAY", "value": "600"}]
    with operator.env(ASSAY_OPERATOR_STALL_SECONDS=str(STALL)):
        apply(kubectl, ns, evaljob("hangs", inputs, s3_env, workers=1, runtime={"env": hang}))
        api.wait_phase("hangs", ("Running",), timeout=180)

        def stalled():
            conds = {c["type"]: c for c in api.status("hangs").get("conditions") or []}
            cond = conds.get("ShardsProgressing") or {}
            return cond if cond.get("status") == "False" else None

        cond = wait_for(stalled, "ShardsProgressing=False", timeout=STALL + 60)
        assert cond["reason"] == "NoShardCompleted", cond
        assert api.status("hangs")["phase"] == "Running", "a stall warns; the job keeps running"
