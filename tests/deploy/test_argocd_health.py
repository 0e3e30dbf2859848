"""deploy/argocd/health-evaluationjob.lua, run in a real Lua (lupa) the way Argo CD runs it: ``obj`` as a
global table, the script's return value as {status, message}. Sample statuses come from the operator's
own status derivation (status.py), so a renamed phase or condition breaks this test, not Argo CD."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from assay_operator import status as st

lupa = pytest.importorskip("lupa", reason="pip install lupa (in the test extra)")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "deploy" / "argocd" / "health-evaluationjob.lua").read_text()
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def to_lua(rt, value):
    if isinstance(value, dict):
        return rt.table_from({k: to_lua(rt, v) for k, v in value.items()})
    if isinstance(value, list):
        return rt.table_from([to_lua(rt, v) for v in value])
    return value


def health(obj: dict) -> tuple[str, str]:
    rt = lupa.LuaRuntime(unpack_returned_tuples=True)
    rt.globals().obj = to_lua(rt, obj)
    # Argo CD runs the script as a chunk whose top-level `return` is the result; so does execute().
    result = rt.execute(SCRIPT)
    return result["status"], result["message"]


def job(phase: str | None, reason: str = "", message: str = "", generation: int = 1, observed: int | None = 1,
        conditions: bool = True) -> dict:
    obj: dict = {"apiVersion": "assay.dev/v1alpha1", "kind": "EvaluationJob",
                 "metadata": {"name": "e", "namespace": "n", "generation": generation}, "spec": {}}
    if phase is None:
        return obj
    status: dict = {"phase": phase, "reason": reason or phase, "message": message}
    if conditions:
        status["conditions"] = st.conditions_for(phase, reason or phase, message, [], observed, NOW)
    if observed is not None:
        status["observedGeneration"] = observed
    obj["status"] = status
    return obj


@pytest.mark.parametrize("obj, expected", [
    (job(None), "Progressing"),
    (job(st.PENDING, "PodsStarting"), "Progressing"),
    (job(st.RUNNING, "ShardsRunning", "2 ppl worker(s) predicting"), "Progressing"),
    (job(st.EVALUATING, "ComputingMetrics"), "Progressing"),
    (job(st.SUCCEEDED, "Succeeded", "bbox/AP = 0.8123"), "Healthy"),
    (job(st.FAILED, "ShardRetriesExhausted", "ppl index 1 failed 3 times"), "Degraded"),
    (job(st.SUSPENDED, "SuspendedBySpec", "spec.suspend is true"), "Suspended"),
    (job(st.SUCCEEDED, generation=2, observed=1), "Progressing"),  # spec edited: old status is stale
    (job(st.FAILED, generation=3, observed=3), "Degraded"),
    (job(st.SUCCEEDED, conditions=False, observed=None), "Healthy"),  # phase alone still decides
    (job(st.FAILED, conditions=False), "Degraded"),
    ({"metadata": {"name": "e"}, "status": {}}, "Progressing"),
])
def test_health_of_sample_statuses(obj, expected):
    assert health(obj)[0] == expected


def test_messages_name_the_reason_and_the_stale_generation():
    assert health(job(st.FAILED, "OOMKilled", "pod e-ppl-0 ran out of memory"))[1] == \
        "Failed (OOMKilled): pod e-ppl-0 ran out of memory"
    assert "generation 2" in health(job(st.RUNNING, generation=2, observed=1))[1]
    assert health(job(None))[1].startswith("Waiting for the assay operator")


def test_every_phase_the_operator_writes_has_a_health():
    phases = {st.PENDING, st.RUNNING, st.EVALUATING, st.SUCCEEDED, st.FAILED, st.SUSPENDED}
    seen = {p: health(job(p))[0] for p in phases}
    assert seen == {st.PENDING: "Progressing", st.RUNNING: "Progressing", st.EVALUATING: "Progressing",
                    st.SUCCEEDED: "Healthy", st.FAILED: "Degraded", st.SUSPENDED: "Suspended"}
    assert set(st.CONDITION_TYPES) >= {"Ready", "Failed", "Suspended"}
