"""The CLI's only door to Kubernetes: submit, read, watch, cancel EvaluationJobs and read their logs.

The ``kubernetes`` client is imported lazily, so ``import assay`` never needs it. Credentials come
from the in-cluster service account or the kubeconfig (KUBECONFIG, ``--context``). Objects are
plain dicts, as in YAML.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from assay.errors import AssayError
from assay.protocol import GROUP, JOB_LABEL, PLURAL, ROLE_LABEL, TERMINAL, VERSION
from assay.spec import EvaluationJob

INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


class ClusterError(AssayError, RuntimeError):
    """The cluster refused or failed a request."""


class UnreachableClusterError(ClusterError):
    """The API server did not answer (refused, timed out): it may be down or restarting."""

    retryable = True


class Cluster:
    """A connection to one cluster (lazily configured)."""

    def __init__(self, context: str | None = None, namespace: str | None = None) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
            default_ns = _incluster_namespace()
        except config.ConfigException:
            try:
                config.load_kube_config(context=context)
            except (config.ConfigException, FileNotFoundError) as exc:
                raise ClusterError(f"no Kubernetes credentials: {exc}",
                                   "set KUBECONFIG or pass --context; run inside a pod for in-cluster access") \
                    from exc
            _, active = config.list_kube_config_contexts()
            default_ns = (active or {}).get("context", {}).get("namespace") or "default"
        self.namespace = namespace or default_ns
        self._api = client.ApiClient()
        self.custom = client.CustomObjectsApi(self._api)
        self.core = client.CoreV1Api(self._api)

    # ------------------------------------------------------------------------------ EvaluationJobs

    def submit(self, job: EvaluationJob) -> dict[str, Any]:
        body = job.to_manifest()
        ns = job.namespace if job.namespace != "default" else self.namespace
        body["metadata"]["namespace"] = ns
        return self._call(lambda: self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body,
                                                                              _preload_content=False),
                          f"EvaluationJob {ns}/{job.name}")

    def get(self, name: str) -> dict[str, Any]:
        return self._call(lambda: self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                                           PLURAL, name, _preload_content=False),
                          f"EvaluationJob {self.namespace}/{name}")

    def list(self, all_namespaces: bool = False) -> list[dict[str, Any]]:
        if all_namespaces:
            raw = self._call(lambda: self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL,
                                                                               _preload_content=False), "EvaluationJobs")
        else:
            raw = self._call(lambda: self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                                               PLURAL, _preload_content=False), "EvaluationJobs")
        return list(raw.get("items") or [])

    def cancel(self, name: str) -> None:
        """Delete the EvaluationJob; its Jobs and pods go with it (ownerReferences)."""
        self._call(lambda: self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, propagation_policy="Foreground"),
            f"EvaluationJob {self.namespace}/{name}")

    def watch(self, name: str, interval: float = 2.0, timeout: float | None = None,
              sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, Any]]:
        """Yield the EvaluationJob whenever its status changes, until it succeeds or fails."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            obj = self.get(name)
            st = obj.get("status") or {}
            key = json.dumps(st, sort_keys=True)
            if key != last:
                last = key
                yield obj
            if st.get("phase") in TERMINAL:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise ClusterError(f"EvaluationJob {name} did not finish in {timeout:.0f}s",
                                   f"keep watching with `assay job watch {name}`")
            sleep(interval)

    # ---------------------------------------------------------------------------------------- logs

    def logs(self, name: str, shard: int | None = None, role: str = "ppl") -> list[tuple[str, str]]:
        """(pod name, log text) of the job's pods; ``shard`` picks the ppl pods of the index (shard group)
        that holds it."""
        selector = f"{JOB_LABEL}={name},{ROLE_LABEL}={role}"
        if shard is not None:
            per_index = int(((self.get(name).get("status") or {}).get("inputs") or {}).get("shardsPerIndex") or 0)
            if per_index < 1:
                raise ClusterError(f"{name} has not pinned its inputs yet, so its shard groups are unknown",
                                   f"wait for it to start (`assay job watch {name}`), or drop --shard")
            selector += f",{INDEX_LABEL}={shard // per_index}"
        pods = self._call(lambda: self.core.list_namespaced_pod(self.namespace, label_selector=selector),
                          f"pods of {name}").items
        if not pods:
            raise ClusterError(f"no {role} pods of {name} found" + (f" for shard {shard}" if shard is not None else ""),
                               "pods are removed after ttlSecondsAfterFinished; the logs are also in the output "
                               "store under logs/")
        out = []
        for pod in sorted(pods, key=lambda p: p.metadata.name):
            text = self._call(lambda p=pod: self.core.read_namespaced_pod_log(p.metadata.name, self.namespace,
                                                                              container="runner"),
                              f"log of {pod.metadata.name}")
            out.append((pod.metadata.name, text))
        return out

    # ------------------------------------------------------------------------------------- helpers

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            result = fn()
        except ApiException as exc:
            raise _translate(exc, what) from exc
        except HTTPError as exc:  # MaxRetryError, ProtocolError, ...: no HTTP answer at all
            raise _unreachable(exc, what, self._api.configuration.host) from exc
        if hasattr(result, "data") and hasattr(result, "status") and isinstance(result.data, bytes):
            return json.loads(result.data or b"{}")  # a raw response (_preload_content=False): plain dicts
        return result


def _unreachable(exc: Exception, what: str, server: str) -> ClusterError:
    """No answer from the API server: a wrong name or certificate (retrying cannot help), or no answer yet."""
    from urllib3.exceptions import LocationParseError, NameResolutionError, SSLError

    cause = getattr(exc, "reason", None) or exc
    if isinstance(cause, NameResolutionError | SSLError | LocationParseError):
        detail = "its name does not resolve" if isinstance(cause, NameResolutionError) else \
            "its TLS certificate is refused" if isinstance(cause, SSLError) else "its address is not valid"
        return ClusterError(f"{what}: cannot reach the Kubernetes API server {server}: {detail} ({cause})",
                            "check the server (and certificate-authority) of the kubeconfig context "
                            "(`kubectl config view --minify`), or pass --context")
    text = str(cause).split(": ", 1)[-1] if "Failed to establish" in str(cause) else str(cause)
    return UnreachableClusterError(f"{what}: cannot reach the Kubernetes API server {server}: {text[:200]}",
                                   "check that the cluster is up (`kubectl cluster-info`) and that the kubeconfig "
                                   "context names it, then run the same command again")


def _translate(exc: Any, what: str) -> ClusterError:
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    if exc.status == 404:
        if "the server could not find the requested resource" in str(message):
            return ClusterError(f"{what}: the EvaluationJob CRD is not installed",
                                "install it: kubectl apply -f crds/evaluationjob.yaml")
        return ClusterError(f"{what} not found", "list jobs with `assay job list`")
    if exc.status == 409:
        return ClusterError(f"{what} already exists", "choose another metadata.name or `assay job cancel` it first")
    if exc.status in (401, 403):
        return ClusterError(f"{what}: access denied ({message})", "check your kubeconfig context and RBAC")
    if exc.status == 422:
        return ClusterError(f"{what} was rejected: {message}", "fix the manifest; see crds/evaluationjob.yaml")
    return ClusterError(f"{what}: HTTP {exc.status}: {message}")


def _incluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def summarize(obj: dict[str, Any]) -> dict[str, Any]:
    """One row of `assay job list`: the printer columns."""
    st = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    return {"namespace": meta.get("namespace", ""), "name": meta.get("name", ""), "phase": st.get("phase", ""),
            "shards": (st.get("shards") or {}).get("summary", ""),
            "progress": (st.get("progress") or {}).get("percentText", ""),
            "result": (st.get("results") or {}).get("headline", ""), "reason": st.get("reason", "")}
