"""Pod Security "restricted" on the chart's operator Deployment and on the Jobs the operator builds
(operator/assay_operator/manifests.py), plus assay's own hardening: read-only root filesystem with
emptyDirs for scratch and caches, no API token in job pods, S3 keys only by Secret reference."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from assay.spec import EvaluationJob, JobSpec
from assay_operator import manifests
from assay_operator.settings import Settings
from tests.deploy.helm import ROOT, by_kind, render
from tests.deploy.podsecurity import check_restricted, pod_spec_of
from tests.deploy.test_chart import VARIANTS

JOB_SPECS = {
    "minimal": {"model": {"uri": "s3://b/models/m"}, "dataset": {"uri": "s3://b/datasets/d"},
                "output": {"uri": "s3://b/jobs/j"}},
    "gpu-minio-queued": {
        "model": {"uri": "s3://b/models/m"}, "dataset": {"uri": "s3://b/datasets/d"},
        "output": {"uri": "s3://b/jobs/j"}, "queueName": "gpu",
        "storage": {"endpoint": "http://minio.minio:9000", "secretRef": {"name": "assay-s3"}},
        "runtime": {"image": "registry.example/runner:1", "imagePullSecrets": [{"name": "regcred"}]},
        "ppl": {"workers": 4, "resources": {"limits": {"nvidia.com/gpu": 1}}, "nodeSelector": {"gpu": "true"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
}
SETTINGS = [Settings(), Settings(run_as_user=2000, pod_service_account="jobs")]


OWNER = {"metadata": {"name": "eval", "namespace": "evals", "uid": "uid-1"}}
INPUTS = {"model": {"uri": "s3://b/m/v1", "name": "m", "version": "v1"},
          "dataset": {"uri": "s3://b/d/v1", "name": "d", "version": "v1"},
          "shards": 8, "samples": 80, "shardsPerIndex": 2, "indexes": 4}


def built_jobs():
    for name, spec in JOB_SPECS.items():
        job = EvaluationJob(name="eval", namespace="evals", spec=JobSpec(**copy.deepcopy(spec)))
        for settings in SETTINGS:
            yield name, manifests.build_resolve_job(OWNER, job, settings)
            yield name, manifests.build_ppl_job(OWNER, job, settings, INPUTS)
            yield name, manifests.build_cmp_job(OWNER, job, settings, INPUTS, 600)


def writable_paths(pod) -> set[str]:
    empty = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
    return {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts") or [] if m["name"] in empty}


@pytest.mark.parametrize("variant", VARIANTS)
def test_operator_deployment_is_restricted(variant):
    (dep,) = by_kind(render(VARIANTS[variant]), "Deployment")
    pod = pod_spec_of(dep)
    assert check_restricted(pod) == []
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and "/tmp" in writable_paths(pod)


@pytest.mark.parametrize("name, job", list(built_jobs()), ids=lambda x: x if isinstance(x, str) else x["metadata"]["name"])
def test_jobs_built_by_the_operator_are_restricted_and_hardened(name, job):
    kubernetes_validate.validate(job, "1.31.0", strict=True)
    pod = pod_spec_of(job)
    assert check_restricted(pod) == []
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"/tmp", manifests.CACHE_DIR} <= writable_paths(pod)
        for env in c["env"]:
            if env["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
                assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"] == "assay-s3"


def test_minio_example_workloads_are_restricted():
    docs = [d for p in sorted((ROOT / "examples" / "minio").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    assert {d["kind"] for d in workloads} == {"Deployment", "Job"}
    for obj in workloads:
        assert check_restricted(pod_spec_of(obj)) == [], obj["metadata"]["name"]


BAD = {
    "root": ({"securityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    "uid0": ({"securityContext": {"runAsUser": 0}}, "runAsUser must not be 0"),
    "no-seccomp": ({"securityContext": {"seccompProfile": None}}, "seccompProfile.type must be"),
    "unconfined": ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, "Unconfined"),
    "host-network": ({"hostNetwork": True}, "hostNetwork"),
    "host-pid": ({"hostPID": True}, "hostPID"),
    "host-ipc": ({"hostIPC": True}, "hostIPC"),
    "host-path": ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, "hostPath"),
    "sysctl": ({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}, "sysctl"),
}
CONTAINER_BAD = {
    "privileged": ({"privileged": True}, "privileged"),
    "escalation": ({"allowPrivilegeEscalation": True}, "allowPrivilegeEscalation"),
    "caps-kept": ({"capabilities": {"drop": []}}, "drop must include ALL"),
    "caps-added": ({"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}, "SYS_ADMIN"),
    "proc": ({"procMount": "Unmasked"}, "procMount"),
}


def good_pod():
    return copy.deepcopy(pod_spec_of(manifests.build_ppl_job(
        OWNER, EvaluationJob(name="e", namespace="n", spec=JobSpec(**JOB_SPECS["minimal"])), Settings(), INPUTS)))


@pytest.mark.parametrize("case", BAD)
def test_checker_catches_pod_level_violations(case):
    change, words = BAD[case]
    pod = good_pod()
    for key, value in change.items():
        if isinstance(value, dict):
            pod.setdefault(key, {}).update({k: v for k, v in value.items() if v is not None})
            for k, v in value.items():
                if v is None:
                    pod[key].pop(k, None)
        else:
            pod[key] = value
    errs = check_restricted(pod)
    assert any(words in e for e in errs), errs


@pytest.mark.parametrize("case", CONTAINER_BAD)
def test_checker_catches_container_violations(case):
    change, words = CONTAINER_BAD[case]
    pod = good_pod()
    pod["containers"][0]["securityContext"].update(change)
    errs = check_restricted(pod)
    assert any(words in e for e in errs), errs


def test_checker_allows_net_bind_service_and_host_port_is_refused():
    pod = good_pod()
    pod["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert check_restricted(pod) == []
    pod["containers"][0]["ports"] = [{"containerPort": 80, "hostPort": 80}]
    assert any("hostPort" in e for e in check_restricted(pod))
