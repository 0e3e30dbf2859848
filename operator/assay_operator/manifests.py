"""Pure builders: an EvaluationJob -> its three child Jobs, as plain dicts.

    <name>-resolve   one pod: pins model and dataset to exact versions, checks they are there, claims the
                     output, and reports the pinned inputs through its termination message
    <name>-ppl       Indexed Job: one index per group of consecutive shards (completions = groups,
                     parallelism = workers), so the Job controller hands groups to pods as they finish
    <name>-cmp       one pod: scores every shard's predictions and reports a bounded summary through its
                     termination message

No API calls and no kopf here: ``reconcile`` sends what these return through ``kube``. Each child carries
a controller ownerReference to its EvaluationJob (the garbage collector deletes it with its owner) and
only assay's own labels: the owner's labels (a Kueue queue label, say) are never copied.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from assay.errors import EXIT_PERMANENT

# The contract's names, used by the builders below (SUSPEND_ANNOTATION records the spec.suspend last applied
# to the children: suspend is written on a change of the spec only, never as a level over what Kueue set).
from assay.protocol import (
    API_VERSION,
    CMP,
    JOB_LABEL,
    KIND,
    PPL,
    RESOLVE,
    RETRY_TOKEN_ANNOTATION,
    ROLE_LABEL,
    SUSPEND_ANNOTATION,
    TERMINATION_LOG,
)
from assay.spec import EvaluationJob, RunContext
from assay_operator.settings import Settings

CONTAINER = "runner"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TMP_DIR = "/tmp"
CACHE_DIR = "/var/cache/assay"
SHM_DIR = "/dev/shm"


def child_name(name: str, role: str) -> str:
    return f"{name}-{role}"


def labels(job: EvaluationJob, role: str) -> dict[str, str]:
    """Labels of a child Job and its pods; the Kueue queue label only from spec.queueName."""
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


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """The controller reference that makes a Job this EvaluationJob's child (uid: not a namesake's)."""
    meta = owner["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def kueue_managed(child: dict[str, Any]) -> bool:
    """Whether Kueue owns this child's suspend field: decided by the child's own label (what Kueue sees),
    not by the live spec.queueName."""
    return KUEUE_QUEUE_LABEL in ((child.get("metadata") or {}).get("labels") or {})


def controlling_evaluationjob(child: dict[str, Any]) -> str | None:
    """The name of the EvaluationJob that is the Job's controller, if one is."""
    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION:
            return ref.get("name")
    return None


def is_predecessor(child: dict[str, Any], name: str) -> bool:
    """A Job whose controller is an EvaluationJob of this name with another uid: the child of a deleted
    namesake, which the garbage collector is about to delete (the caller has compared the uid)."""
    return controlling_evaluationjob(child) == name


def run_settings_of(child: dict[str, Any] | None) -> dict[str, str]:
    """The run settings (RunContext variables) a child Job was built with: cmp scores with the settings
    the predictions were made with, whatever the live spec says now."""
    if child is None:
        return {}
    containers = (((child.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    names = set(RunContext.ENV.values())
    return {e["name"]: e["value"] for c in containers if c.get("name") == CONTAINER for e in c.get("env") or []
            if e.get("name") in names and "value" in e}


def controller_uid(child: dict[str, Any]) -> str | None:
    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


# ----------------------------------------------------------------------------------------------- pods


def env(job: EvaluationJob, role: str, inputs: dict[str, Any] | None,
        recorded: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Container environment: the RunContext (pinned inputs once resolved; ``recorded`` run settings of an
    earlier stage's Job win over the spec's), S3 access by Secret reference only, and every cache and temp
    folder on the cache volume."""
    ctx = RunContext.for_worker(job, 0)
    if inputs:
        ctx = ctx.model_copy(update={
            "model_uri": inputs["model"]["uri"], "model_version": inputs["model"]["version"],
            "dataset_uri": inputs["dataset"]["uri"], "dataset_version": inputs["dataset"]["version"],
            "shards_per_index": inputs["shardsPerIndex"]})
    # JOB_COMPLETION_INDEX comes from Kubernetes
    values = ctx.to_env()
    if recorded:  # exactly the earlier Job's settings: a setting it did not have stays unset
        values = {k: v for k, v in values.items() if k in _PINNED} | \
                 {k: v for k, v in recorded.items() if k not in _PINNED}
    out: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(values.items())]
    store = job.spec.storage
    if store.endpoint:
        out.append({"name": "AWS_ENDPOINT_URL", "value": store.endpoint})
    if store.region:
        out.append({"name": "AWS_REGION", "value": store.region})
    if store.secret_ref:  # the pods read the Secret through the kubelet; the operator never does
        for key, optional in (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False),
                              ("AWS_SESSION_TOKEN", True)):
            ref: dict[str, Any] = {"name": store.secret_ref.name, "key": key}
            if optional:
                ref["optional"] = True
            out.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    out += [
        {"name": "HOME", "value": f"{TMP_DIR}/home"},
        # model packages, shards and every temp file go to the large cache volume, not the small /tmp
        {"name": "ASSAY_CACHE_DIR", "value": CACHE_DIR},
        {"name": "TMPDIR", "value": CACHE_DIR},
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "TORCH_HOME", "value": f"{CACHE_DIR}/torch"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "ASSAY_TERMINATION_LOG", "value": TERMINATION_LOG},
    ]
    # A user variable replaces ours of the same name (duplicates draw API server warnings).
    user = [copy.deepcopy(e) for e in job.spec.runtime.env]
    names = {e["name"] for e in user}
    return [e for e in out if e["name"] not in names] + user


#: RunContext variables that come from the pinned inputs, never from an earlier Job's environment.
_PINNED = {RunContext.ENV[f] for f in ("model_uri", "model_version", "dataset_uri", "dataset_version",
                                       "shards_per_index", "job_name", "output_uri")}


def pod_security_context(settings: Settings) -> dict[str, Any]:
    """Pod Security Standard "restricted"."""
    uid = settings.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}


def volumes(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts): writable emptyDirs for /tmp and the cache, and a memory-backed /dev/shm
    (data loaders share batches through it; the container runtime's default is 64 MiB)."""
    vols = [{"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size_limit}},
            {"name": "cache", "emptyDir": {"sizeLimit": settings.cache_size_limit}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size_limit}}]
    mounts = [{"name": "tmp", "mountPath": TMP_DIR}, {"name": "cache", "mountPath": CACHE_DIR},
              {"name": "shm", "mountPath": SHM_DIR}]
    return vols, mounts


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(text: str) -> int:
    m = _QUANTITY.match(str(text))
    if not m:
        raise ValueError(f"not a byte quantity: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def with_ephemeral_storage(resources: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """spec.*.resources with every quantity as a string (the API server takes ``nvidia.com/gpu: 1``, the
    kubernetes client's typed models refuse the integer: found on a real cluster). With
    ``request_ephemeral_storage`` (off by default) also a request for the ephemeral storage the emptyDirs
    may fill: it lets the scheduler pick a node with that much disk, but a request the user never asked
    for also makes Kueue's ClusterQueues, which rarely cover ephemeral-storage, never admit the job."""
    out = copy.deepcopy(resources)
    for key in ("limits", "requests"):
        if isinstance(out.get(key), dict):
            out[key] = {name: str(value) for name, value in out[key].items()}
    if not settings.request_ephemeral_storage:
        return out
    requests = out.setdefault("requests", {})
    if "ephemeral-storage" not in requests:
        total = quantity_bytes(settings.tmp_size_limit) + quantity_bytes(settings.cache_size_limit)
        requests["ephemeral-storage"] = f"{-(-total // 2**20)}Mi"
    return out


def pod_failure_policy() -> dict[str, Any]:
    """The runner's EXIT_PERMANENT fails the Job at once; preemption and eviction do not count.
    Everything else (OOMKilled included) counts against the retry budget."""
    return {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                              "values": [EXIT_PERMANENT]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def pod_template(job: EvaluationJob, settings: Settings, role: str, inputs: dict[str, Any] | None,
                 resources: dict[str, Any], recorded: dict[str, str] | None = None) -> dict[str, Any]:
    runtime = job.spec.runtime
    vols, mounts = volumes(settings)
    container = {
        "name": CONTAINER,
        "image": runtime.image or settings.runner_image,
        "imagePullPolicy": runtime.image_pull_policy,
        "command": ["python", "-m", "assay.runner", role],
        "env": env(job, role, inputs, recorded),
        "resources": with_ephemeral_storage(resources, settings),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
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
    account = runtime.service_account_name or settings.pod_service_account
    if account:  # e.g. IRSA or Workload Identity: the cloud's webhook projects its own token
        spec["serviceAccountName"] = account
    if runtime.runtime_class_name:
        spec["runtimeClassName"] = runtime.runtime_class_name
    if runtime.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s.name} for s in runtime.image_pull_secrets]
    ppl = job.spec.ppl
    if ppl.priority_class_name:
        spec["priorityClassName"] = ppl.priority_class_name
    if role == PPL:
        # Placement targets the accelerator nodes; resolve and cmp are CPU work and may run anywhere.
        if ppl.node_selector:
            spec["nodeSelector"] = dict(ppl.node_selector)
        if ppl.tolerations:
            spec["tolerations"] = copy.deepcopy(ppl.tolerations)
        if ppl.affinity:
            spec["affinity"] = copy.deepcopy(ppl.affinity)
    return {"metadata": {"labels": labels(job, role)}, "spec": spec}


def _child(owner: dict[str, Any], job: EvaluationJob, role: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": child_name(job.name, role), "namespace": job.namespace,
                         "labels": labels(job, role),
                         "annotations": {RETRY_TOKEN_ANNOTATION: job.spec.retry_token or "",
                                         SUSPEND_ANNOTATION: "true" if job.spec.suspend else "false"},
                         "ownerReferences": [owner_reference(owner)]},
            "spec": spec}


def created_suspended(job: EvaluationJob) -> bool:
    """Kueue admits a queued Job by unsuspending it, so queued Jobs start suspended (and the operator
    creates no child while spec.suspend is true)."""
    return job.spec.suspend or bool(job.spec.queue_name)


# ----------------------------------------------------------------------------------------------- Jobs


def build_resolve_job(owner: dict[str, Any], job: EvaluationJob, settings: Settings) -> dict[str, Any]:
    """The first stage: pin and check the inputs before any accelerator is held."""
    spec: dict[str, Any] = {
        "completions": 1,
        "parallelism": 1,
        "backoffLimit": settings.resolve_backoff_limit,  # an unreachable store is worth a few tries
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        "suspend": created_suspended(job),
        # a store that hangs must not hold the job in Resolving for ever (the clock pauses while queued)
        "activeDeadlineSeconds": settings.resolve_deadline_seconds,
        "template": pod_template(job, settings, RESOLVE, None, settings.resolve_resources),
    }
    return _child(owner, job, RESOLVE, spec)


def build_ppl_job(owner: dict[str, Any], job: EvaluationJob, settings: Settings,
                  inputs: dict[str, Any]) -> dict[str, Any]:
    """The inference Job: index k predicts the k-th group of consecutive shards (resumable)."""
    ppl = job.spec.ppl
    indexes = int(inputs["indexes"])
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": indexes,
        # pods beyond the number of groups would hold accelerators and exit
        "parallelism": min(ppl.workers, indexes),
        "backoffLimitPerIndex": ppl.max_retries_per_shard,
        # One group past its budget fails the whole Job now rather than after the others finish;
        # their finished shards stay in the store and a retry reuses them.
        "maxFailedIndexes": 0,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        "suspend": created_suspended(job),
        "template": pod_template(job, settings, PPL, inputs, ppl.resources),
    }
    if job.spec.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = job.spec.active_deadline_seconds
    return _child(owner, job, PPL, spec)


def build_cmp_job(owner: dict[str, Any], job: EvaluationJob, settings: Settings, inputs: dict[str, Any],
                  active_deadline_seconds: int | None = None,
                  recorded: dict[str, str] | None = None) -> dict[str, Any]:
    """The metrics Job: one pod merges every shard's predictions and writes metrics.json.

    ``active_deadline_seconds`` is what the ppl Job left of spec.activeDeadlineSeconds by its own clock;
    ``recorded`` the run settings the ppl Job was built with (``run_settings_of``).
    """
    spec: dict[str, Any] = {
        "completions": 1,
        "parallelism": 1,
        "backoffLimit": settings.cmp_backoff_limit,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        "suspend": created_suspended(job),
        "template": pod_template(job, settings, CMP, inputs, job.spec.cmp.resources, recorded),
    }
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = max(1, int(active_deadline_seconds))
    return _child(owner, job, CMP, spec)
