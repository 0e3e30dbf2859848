"""Pure builders: an EvaluationJob spec -> the ppl Indexed Job and the cmp Job, as plain dicts.

No API calls and no kopf here: ``handlers`` adopts the results (ownerReferences) and ``kube`` sends them.
The same builders serve the operator and ``assay job submit --dry-run``-style previews.
"""

from __future__ import annotations

import copy
from typing import Any

from assay.errors import EXIT_PERMANENT
from assay.spec import EvaluationJob, RunContext

from assay_operator.settings import Settings

PPL = "ppl"
CMP = "cmp"
CONTAINER = "runner"
#: Label selecting every pod and Job of one EvaluationJob (its name).
JOB_LABEL = "assay.dev/job"
ROLE_LABEL = "assay.dev/role"
#: Annotation on child Jobs: the spec.retryToken of the attempt that created them.
RETRY_TOKEN_ANNOTATION = "assay.dev/retry-token"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TMP_DIR = "/tmp"
CACHE_DIR = "/var/cache/assay"
COMMANDS = {PPL: ["python", "-m", "assay.runner", PPL], CMP: ["python", "-m", "assay.runner", CMP]}


def ppl_job_name(name: str) -> str:
    return f"{name}-{PPL}"


def cmp_job_name(name: str) -> str:
    return f"{name}-{CMP}"


def labels(job: EvaluationJob, role: str) -> dict[str, str]:
    """Labels of a child Job and its pods; the Kueue queue label only when spec.queueName is set."""
    out = {
        "app.kubernetes.io/name": "assay",
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/managed-by": "assay-operator",
        JOB_LABEL: job.name,
        ROLE_LABEL: role,
    }
    if job.spec.queue_name:
        out[KUEUE_QUEUE_LABEL] = job.spec.queue_name
    return out


def pod_selector(name: str, role: str | None = None) -> str:
    """Label selector of the pods of one EvaluationJob (optionally one role)."""
    return f"{JOB_LABEL}={name}" + (f",{ROLE_LABEL}={role}" if role else "")


def env(job: EvaluationJob, settings: Settings) -> list[dict[str, Any]]:
    """Container environment: the RunContext, S3 access by Secret reference only, writable cache dirs."""
    ctx = RunContext.for_worker(job, 0).to_env()  # JOB_COMPLETION_INDEX comes from Kubernetes
    out: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(ctx.items())]
    storage = job.spec.storage
    if storage.endpoint:
        out.append({"name": "AWS_ENDPOINT_URL", "value": storage.endpoint})
    if storage.region:
        out.append({"name": "AWS_REGION", "value": storage.region})
    if storage.secret_ref:
        for key, optional in (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False),
                              ("AWS_SESSION_TOKEN", True)):
            ref: dict[str, Any] = {"name": storage.secret_ref.name, "key": key}
            if optional:
                ref["optional"] = True
            out.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    out += [
        {"name": "HOME", "value": f"{TMP_DIR}/home"},
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "TORCH_HOME", "value": f"{CACHE_DIR}/torch"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    # A user variable replaces ours of the same name (duplicates draw API server warnings).
    user = [copy.deepcopy(e) for e in job.spec.runtime.env]
    names = {e["name"] for e in user}
    return [e for e in out if e["name"] not in names] + user


def pod_security_context(settings: Settings) -> dict[str, Any]:
    """Pod Security Standard "restricted"."""
    uid = settings.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}


def volumes(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts): writable emptyDirs for /tmp and the model/torch cache."""
    vols = [{"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size_limit}},
            {"name": "cache", "emptyDir": {"sizeLimit": settings.cache_size_limit}}]
    mounts = [{"name": "tmp", "mountPath": TMP_DIR}, {"name": "cache", "mountPath": CACHE_DIR}]
    return vols, mounts


def pod_failure_policy() -> dict[str, Any]:
    """The runner's EXIT_PERMANENT fails the Job at once; preemption and eviction do not count."""
    return {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                              "values": [EXIT_PERMANENT]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def container_resources(resources: dict[str, Any]) -> dict[str, Any]:
    """spec.*.resources with every quantity as a string.

    The API server takes ``nvidia.com/gpu: 1`` or ``"1"``; the kubernetes client's typed models refuse
    the integer, so the Job create failed before reaching the API server (found on a real cluster).
    """
    out = copy.deepcopy(resources)
    for key in ("limits", "requests"):
        if isinstance(out.get(key), dict):
            out[key] = {name: str(value) for name, value in out[key].items()}
    return out


def pod_template(job: EvaluationJob, settings: Settings, role: str, resources: dict[str, Any]) -> dict[str, Any]:
    runtime = job.spec.runtime
    vols, mounts = volumes(settings)
    container = {
        "name": CONTAINER,
        "image": runtime.image or settings.runner_image,
        "imagePullPolicy": runtime.image_pull_policy,
        "command": list(COMMANDS[role]),
        "env": env(job, settings),
        "resources": container_resources(resources),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; the Job controller retries
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(settings),
        "containers": [container],
        "volumes": vols,
    }
    if settings.pod_service_account:
        spec["serviceAccountName"] = settings.pod_service_account
    if runtime.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s.name} for s in runtime.image_pull_secrets]
    ppl = job.spec.ppl
    if ppl.priority_class_name:
        spec["priorityClassName"] = ppl.priority_class_name
    if role == PPL:
        # Placement targets the accelerator nodes; cmp is CPU work and may run anywhere.
        if ppl.node_selector:
            spec["nodeSelector"] = dict(ppl.node_selector)
        if ppl.tolerations:
            spec["tolerations"] = copy.deepcopy(ppl.tolerations)
        if ppl.affinity:
            spec["affinity"] = copy.deepcopy(ppl.affinity)
    return {"metadata": {"labels": labels(job, role)}, "spec": spec}


def _metadata(job: EvaluationJob, name: str, role: str) -> dict[str, Any]:
    return {"name": name, "namespace": job.namespace, "labels": labels(job, role),
            "annotations": {RETRY_TOKEN_ANNOTATION: job.spec.retry_token or ""}}


def created_suspended(job: EvaluationJob) -> bool:
    """Kueue admits a queued Job by unsuspending it, so queued Jobs start suspended."""
    return job.spec.suspend or bool(job.spec.queue_name)


def build_ppl_job(job: EvaluationJob, settings: Settings) -> dict[str, Any]:
    """The inference Job: one index per worker; worker i takes shards i, i+N, ... (resumable)."""
    ppl = job.spec.ppl
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": ppl.workers,
        "parallelism": ppl.workers,
        "backoffLimitPerIndex": ppl.max_retries_per_shard,
        # One index past its budget fails the whole Job now rather than after the others finish;
        # their finished shards stay in the store and a retry reuses them.
        "maxFailedIndexes": 0,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        "suspend": created_suspended(job),
        "template": pod_template(job, settings, PPL, ppl.resources),
    }
    if job.spec.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = job.spec.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _metadata(job, ppl_job_name(job.name), PPL), "spec": spec}


def build_cmp_job(job: EvaluationJob, settings: Settings,
                  active_deadline_seconds: int | None = None) -> dict[str, Any]:
    """The metrics Job: one pod merges every shard's predictions and writes metrics.json.

    ``active_deadline_seconds`` is what is left of spec.activeDeadlineSeconds after the ppl phase.
    """
    spec: dict[str, Any] = {
        "completions": 1,
        "parallelism": 1,
        "backoffLimit": settings.cmp_backoff_limit,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        "suspend": created_suspended(job),
        "template": pod_template(job, settings, CMP, job.spec.cmp.resources),
    }
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = max(1, int(active_deadline_seconds))
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _metadata(job, cmp_job_name(job.name), CMP), "spec": spec}
