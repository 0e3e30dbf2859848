"""Operator faults: restarts at every step of a job's life, a ppl pod deleted mid-run, and a planted
secret that must never appear in status, Events, Jobs or the operator's log."""

from __future__ import annotations

import base64
import json
import time

from conftest import NS, wait_for

PPL, CMP = "eval-ppl", "eval-cmp"


def phase(cluster, name="eval"):
    return cluster.status(name).get("phase")


def _stable(st: dict) -> dict:
    """Status without the fields a resync may legitimately refresh."""
    return {k: v for k, v in st.items() if k not in ("progress",)}


def test_restart_at_every_step_gives_one_ppl_and_one_cmp_job(cluster, operator):
    cluster.write_inputs(shards=4)
    cluster.apply(cluster.manifest())                 # 1. created while no operator runs: no ppl Job yet
    restarts = 0
    with operator():
        restarts += 1
        wait_for(lambda: PPL in cluster.jobs(), what="the ppl Job")
    cluster.add_pod("eval-ppl-0-aaaaa", PPL, "ppl", phase="Running")
    cluster.job_status(PPL, active=2, ready=2)
    with operator():                                  # 2. while ppl runs
        restarts += 1
        wait_for(lambda: phase(cluster) == "Running", what="Running")
    cluster.complete(PPL, completions=2)
    with operator():                                  # 3. between ppl and cmp
        restarts += 1
        wait_for(lambda: CMP in cluster.jobs(), what="the cmp Job")
    cluster.job_status(CMP, active=1, ready=1)
    with operator():                                  # 4. while cmp runs
        restarts += 1
        wait_for(lambda: phase(cluster) == "Evaluating", what="Evaluating")
    cluster.complete(CMP)
    cluster.write_metrics()
    with operator():                                  # 5. after cmp, before the metrics are in status
        restarts += 1
        done = wait_for(lambda: phase(cluster) == "Succeeded" and cluster.status(), what="Succeeded")
    events_after_success = len(cluster.events())
    with operator():                                  # 6. after success: nothing changes
        restarts += 1
        wait_for(lambda: True, what="a resync")
        time.sleep(1.0)
    after = cluster.status()
    assert restarts == 6
    assert sorted(cluster.jobs()) == [CMP, PPL], "exactly one ppl Job and one cmp Job"
    assert _stable(after) == _stable(done)
    assert len(cluster.events()) == events_after_success, "no transition is announced twice"
    assert after["shards"]["summary"] == "4/4" and after["results"]["headline"] == "0.812"


def test_ppl_pod_deleted_mid_run_is_replaced_not_failed(cluster, operator):
    """A deleted or preempted pod is the Job controller's to replace; the job stays Running, no new Job."""
    cluster.write_inputs(shards=2)
    with operator():
        cluster.apply(cluster.manifest())
        wait_for(lambda: PPL in cluster.jobs(), what="the ppl Job")
        uid = cluster.jobs()[PPL]["metadata"].get("uid")
        cluster.add_pod("eval-ppl-0-first", PPL, "ppl", phase="Running")
        cluster.job_status(PPL, active=2, ready=2)
        wait_for(lambda: phase(cluster) == "Running", what="Running")
        cluster.core.delete_namespaced_pod("eval-ppl-0-first", NS)          # the pod is deleted mid-run
        cluster.add_pod("eval-ppl-0-second", PPL, "ppl", phase="Running")   # the Job controller replaces it
        cluster.job_status(PPL, active=2, ready=2, failed=0)
        time.sleep(1.0)
        assert phase(cluster) == "Running"
        assert sorted(cluster.jobs()) == [PPL] and cluster.jobs()[PPL]["metadata"].get("uid") == uid
        cluster.complete(PPL, completions=2)
        wait_for(lambda: CMP in cluster.jobs(), what="the cmp Job")
        cluster.complete(CMP)
        cluster.write_metrics()
        wait_for(lambda: phase(cluster) == "Succeeded", what="Succeeded")


PLANTED = "PLANTED-s3cr3t-9f8e7d"


def test_planted_secret_never_leaks(cluster, operator):
    cluster.write_inputs(shards=2)
    cluster.core.create_namespaced_secret(NS, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "store-creds", "namespace": NS},
        "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"AKIAPLANTED").decode(),
                 "AWS_SECRET_ACCESS_KEY": base64.b64encode(PLANTED.encode()).decode()}})
    with operator() as runner:
        cluster.apply(cluster.manifest(storage={"secretRef": {"name": "store-creds"},
                                                "endpoint": "http://127.0.0.1:9"}))
        wait_for(lambda: PPL in cluster.jobs(), what="the ppl Job")
        cluster.complete(PPL, completions=2)
        wait_for(lambda: CMP in cluster.jobs(), what="the cmp Job")
        cluster.complete(CMP)
        cluster.write_metrics()
        wait_for(lambda: phase(cluster) in ("Succeeded", "Failed"), what="a final phase")
    seen = json.dumps([cluster.evaljob(), cluster.events(), cluster.jobs()])
    assert PLANTED not in seen and "AKIAPLANTED" not in seen
    assert PLANTED not in runner.output
    env = cluster.jobs()[PPL]["spec"]["template"]["spec"]["containers"][0]["env"]
    secret_env = [e for e in env if e["name"].startswith("AWS_") and "KEY" in e["name"]]
    assert secret_env and all("valueFrom" in e and "value" not in e for e in secret_env)
