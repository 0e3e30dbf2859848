"""Typed operator settings, read once from ``ASSAY_OPERATOR_*`` environment variables.

A bad value fails at startup with the variable's name and what it accepts (pydantic-settings).
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ASSAY_OPERATOR_", frozen=True, extra="ignore")

    #: Runner image used when an EvaluationJob sets no spec.runtime.image.
    runner_image: str = "ghcr.io/assay-dev/assay-runner:0.1.0"
    #: Namespaces to watch (comma-separated); empty watches the whole cluster.
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Watch namespaces and CRDs for changes (kopf's scanning). Off: the namespaces given at start are
    #: assumed to exist and a CRD installed later needs an operator restart (for RBAC that may not list
    #: namespaces or CRDs).
    api_scanning: bool = True
    #: Reconciles of different jobs that run at once (one job's never overlap). Reconciles read from
    #: watch-fed memory; the workers wait on writes only.
    workers: int = Field(8, ge=1, le=256)
    #: Seconds before a child Job the API server refused for now (quota, a forbidden create) is tried again:
    #: a quota that frees changes nothing the operator watches.
    hold_retry_seconds: float = Field(10.0, gt=0)
    #: Namespace of the coordination.k8s.io Lease of leader election (the chart: the operator's own).
    #: Empty: no election, this process acts alone (one replica, ``kopf run``, tests).
    lease_namespace: str = ""
    #: Name of that Lease: replicas of one release share it.
    lease_name: str = "assay-operator"
    #: First and longest delay before a reconcile that raised is retried (doubling in between, per job).
    retry_min_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float = Field(300.0, gt=0)
    #: Seconds a pod may sit in ImagePullBackOff, ErrImagePull or CreateContainerConfigError before the
    #: job fails (short: these rarely heal, and the user wants the reason now, not after the pending deadline).
    fail_fast_seconds: float = Field(60.0, ge=0)
    #: Pod retries of the cmp Job (the runner's exit code 3 still fails it at once).
    cmp_backoff_limit: int = Field(2, ge=0, le=20)
    #: Pod retries of the resolve Job (a store that is briefly unreachable); exit code 3 fails at once.
    resolve_backoff_limit: int = Field(3, ge=0, le=20)
    #: Resources of the resolve pod (it reads two manifests and lists the dataset folder).
    resolve_resources: dict = Field(default_factory=lambda: {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                             "limits": {"memory": "1Gi"}})
    #: activeDeadlineSeconds of the resolve Job (it reads two manifests; a store that hangs fails it).
    resolve_deadline_seconds: int = Field(900, ge=30)
    #: How often a stage Job that completed without a readable report (its pod gone) is run again.
    max_stage_reruns: int = Field(3, ge=0, le=10)
    #: Request ephemeral-storage for the emptyDirs' size limits on every job container. Off by default: a
    #: request the user did not ask for keeps Kueue from admitting jobs into ClusterQueues without it.
    request_ephemeral_storage: bool = False
    #: Seconds without a completed shard group, while ppl pods run, before the job's ShardsProgressing
    #: condition turns False (a Warning; the job keeps running).
    stall_seconds: float = Field(3600.0, gt=0)
    #: At most one status write per job in this many seconds when only progress changed.
    progress_write_seconds: float = Field(30.0, ge=0)
    #: Size limits of the job pods' writable emptyDir volumes (the root filesystem is read-only).
    tmp_size_limit: str = "2Gi"
    cache_size_limit: str = "20Gi"
    #: Size of the memory-backed /dev/shm of job pods (counts against the pod's memory).
    shm_size_limit: str = "1Gi"
    #: Service account of the job pods; its token is never mounted (pods get no API access).
    pod_service_account: str | None = None
    #: User and group id the job pods run as (the runner image's non-root user).
    run_as_user: int = Field(1000, ge=1)
    #: Port of the Prometheus metrics endpoint (``/metrics`` on 0.0.0.0); 0 turns it off.
    metrics_port: int = Field(8000, ge=0, le=65535)
    #: Port of kopf's liveness/readiness endpoint (``/healthz`` on 0.0.0.0) when run as ``python -m assay_operator``.
    health_port: int = Field(8080, ge=1, le=65535)
    #: Log format: ``text`` (kopf's default lines) or ``json`` (one JSON object per line, with the object's
    #: namespace/name under ``object``; for log collectors).
    log_format: Literal["text", "json"] = "text"
    #: Log level of the operator's and kopf's loggers.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # What an EvaluationJob may ask of the pods the operator creates for it (assay_operator.policy):
    # the operator's rights are not its author's, so each list says what the author may borrow. In every
    # list (comma-separated in the environment) "*" allows anything and an empty list allows nothing
    # beyond the operator's own defaults: a list left empty by mistake fails closed.

    #: Prefixes a spec.runtime.image must start with. Unset: the directory of runner_image
    #: (``ghcr.io/assay-dev/``). The runner image itself is always allowed.
    allowed_image_prefixes: Annotated[list[str] | None, NoDecode] = None
    #: ServiceAccounts spec.runtime.serviceAccountName may name: ``name`` (in any watched namespace) or
    #: ``namespace/name``. pod_service_account is always allowed.
    allowed_service_accounts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Secrets spec.storage.secretRef may name (its S3 keys reach the pods, so their code can read them).
    allowed_storage_secrets: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    #: Secrets a spec.runtime.env valueFrom.secretKeyRef may name besides spec.storage.secretRef's.
    allowed_env_secrets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: ConfigMaps a spec.runtime.env valueFrom.configMapKeyRef may name.
    allowed_env_config_maps: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: RuntimeClasses spec.runtime.runtimeClassName may name.
    allowed_runtime_class_names: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: PriorityClasses spec.ppl.priorityClassName may name (a high one preempts other workloads).
    allowed_priority_class_names: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("namespaces", "allowed_image_prefixes", "allowed_service_accounts", "allowed_storage_secrets",
                     "allowed_env_secrets", "allowed_env_config_maps", "allowed_runtime_class_names",
                     "allowed_priority_class_names", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The process's environment (and arguments) only: no .env file, no secrets folder."""
        return init_settings, env_settings


@functools.cache
def load() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
