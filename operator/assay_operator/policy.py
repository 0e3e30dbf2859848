"""What an EvaluationJob may borrow from the operator: the confused-deputy rules.

The operator creates Jobs, and so pods, that its author may not be allowed to create: pods under a
namespace's ServiceAccounts, with Secrets read by the kubelet. Without these rules, creating an
EvaluationJob would be creating any pod. ``check`` lists what a spec asks beyond the operator's settings
(``Settings.allowed_*``); the chart's ValidatingAdmissionPolicy (templates/admission-policy.yaml) enforces
the same rules at admission, and this module is the backstop when that policy is off or the settings
are stricter than it.

Pure: no API calls. A violation names the field and the rule, never an environment variable's value
(status is readable by more people than the Secrets it could come from).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from assay.spec import EvaluationJob, RunContext
from assay_operator.settings import Settings

#: status.reason of a job refused by these rules (terminal: a new spec.retryToken after a fix reruns it).
REASON = "PolicyViolation"
HINT = ("change the spec, or ask the cluster admin to allow it (chart values `policy.*`, operator "
        "settings ASSAY_OPERATOR_ALLOWED_*; see SECURITY.md)")
#: In any allow-list: allows everything.
ANY = "*"

#: Variables the operator sets in every job pod (manifests.env; a unit test keeps this in step). A user
#: variable of these names would redirect the run (its store, its inputs, where its report goes) or feed
#: a value the runner parses, and may echo, into status.
RESERVED_ENV: frozenset[str] = frozenset(RunContext.ENV.values()) | {
    "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "HOME", "TMPDIR", "XDG_CACHE_HOME", "TORCH_HOME", "PYTHONUNBUFFERED",
    "ASSAY_CACHE_DIR", "ASSAY_TERMINATION_LOG",
}


def image_prefixes(settings: Settings) -> list[str]:
    """The allowed spec.runtime.image prefixes: the setting, else the runner image's directory."""
    if settings.allowed_image_prefixes is not None:
        return settings.allowed_image_prefixes
    return [default_image_prefix(settings.runner_image)]


def default_image_prefix(image: str) -> str:
    """``ghcr.io/assay-dev/assay-runner:0.1.0`` -> ``ghcr.io/assay-dev/`` (the chart derives the same)."""
    repository = image.split("@", 1)[0]
    head, _, last = repository.rpartition("/")
    if not head:
        return last.split(":", 1)[0] + ":"  # a bare name: that repository, any tag
    return head + "/"


def _allowed(name: str, allowed: Iterable[str]) -> bool:
    allowed = list(allowed)
    return ANY in allowed or name in allowed


def check(job: EvaluationJob, settings: Settings) -> list[str]:
    """Every rule the spec breaks, one line each (field and rule; no values of env variables)."""
    runtime = job.spec.runtime
    out: list[str] = []
    image = runtime.image
    if image and image != settings.runner_image:
        prefixes = image_prefixes(settings)
        if ANY not in prefixes and not any(image.startswith(p) for p in prefixes):
            out.append(f"spec.runtime.image {image!r} does not start with an allowed prefix "
                       f"({_listed(prefixes)})")
    account = runtime.service_account_name
    if account and account != settings.pod_service_account and not (
            _allowed(account, settings.allowed_service_accounts)
            or f"{job.namespace}/{account}" in settings.allowed_service_accounts):
        out.append(f"spec.runtime.serviceAccountName {account!r} is not an allowed ServiceAccount "
                   f"({_listed(settings.allowed_service_accounts)})")
    secret = job.spec.storage.secret_ref.name if job.spec.storage.secret_ref else None
    if secret and not _allowed(secret, settings.allowed_storage_secrets):
        out.append(f"spec.storage.secretRef {secret!r} is not an allowed storage Secret "
                   f"({_listed(settings.allowed_storage_secrets)})")
    if runtime.runtime_class_name and not _allowed(runtime.runtime_class_name, settings.allowed_runtime_class_names):
        out.append(f"spec.runtime.runtimeClassName {runtime.runtime_class_name!r} is not allowed "
                   f"({_listed(settings.allowed_runtime_class_names)})")
    priority = job.spec.ppl.priority_class_name
    if priority and not _allowed(priority, settings.allowed_priority_class_names):
        out.append(f"spec.ppl.priorityClassName {priority!r} is not allowed "
                   f"({_listed(settings.allowed_priority_class_names)})")
    for i, var in enumerate(runtime.env):
        out += _env_violations(i, var, secret, settings)
    return out


def _env_violations(i: int, var: dict[str, Any], storage_secret: str | None, settings: Settings) -> list[str]:
    name = str(var.get("name", ""))
    where = f"spec.runtime.env[{i}] ({name})"
    out = []
    if name in RESERVED_ENV:
        out.append(f"{where}: assay sets this variable itself and it may not be replaced")
    source = var.get("valueFrom") or {}
    ref = source.get("secretKeyRef")
    if ref is not None:
        ref_name = ref.get("name") or ""
        if ref_name != storage_secret and not _allowed(ref_name, settings.allowed_env_secrets):
            out.append(f"{where}: valueFrom.secretKeyRef may name only spec.storage.secretRef's Secret or an "
                       f"allowed one ({_listed(settings.allowed_env_secrets)}), not {ref_name!r}")
    ref = source.get("configMapKeyRef")
    if ref is not None:
        ref_name = ref.get("name") or ""
        if not _allowed(ref_name, settings.allowed_env_config_maps):
            out.append(f"{where}: valueFrom.configMapKeyRef may name only an allowed ConfigMap "
                       f"({_listed(settings.allowed_env_config_maps)}), not {ref_name!r}")
    return out  # fieldRef, resourceFieldRef: the pod's own fields; fileKeyRef: the pod's own (emptyDir) volumes


def _listed(allowed: list[str]) -> str:
    return "allowed: " + ", ".join(allowed) if allowed else "none allowed"


def message(violations: list[str]) -> str:
    """The status message of a refused job: every violation, then what to do."""
    return "the operator's policy refuses this job: " + "; ".join(violations) + f" (hint: {HINT})"


def refusal(job: EvaluationJob, settings: Settings) -> tuple[str, str] | None:
    """(reason, message) of a job the operator must not create children for, or None when it may."""
    violations = check(job, settings)
    return (REASON, message(violations)) if violations else None
