"""The only module of the operator that calls the Kubernetes API (the official ``kubernetes`` client).

Objects go in and out as plain dicts (camelCase, as in YAML), so the pure modules never see client
models. Creates are create-if-absent (409 returns the existing object), deletes tolerate 404 and carry
the uid they mean: every call is safe to repeat after a restart, and none touches a namesake.
Reads here are few: reconciles read from ``cache`` (fed by kopf's watches); a job is read here after a
status write conflicted, a Job after a create conflicted, Workloads of a child that may wait for Kueue.
The operator writes status, Jobs and Events: never a Secret, never the object store.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from assay.protocol import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"


@functools.cache
def api_client() -> client.ApiClient:
    """In-cluster credentials when in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    return client.ApiClient()


def reset() -> None:
    """Forget the cached client (tests point KUBECONFIG at a fresh API server)."""
    api_client.cache_clear()


def _batch() -> client.BatchV1Api:
    return client.BatchV1Api(api_client())


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(api_client())


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client())


def _coordination() -> client.CoordinationV1Api:
    return client.CoordinationV1Api(api_client())


def _json(resp: Any) -> dict[str, Any]:
    return json.loads(resp.data or b"{}")


def _found(read: Callable[[], Any]) -> dict[str, Any] | None:
    """The object ``read`` returns, None when it does not exist (404)."""
    try:
        return _json(read())
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def get_evaluationjob(namespace: str, name: str) -> dict[str, Any] | None:
    return _found(lambda: _custom().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                                 _preload_content=False))


class Conflict(Exception):
    """The object changed since the resourceVersion a write was derived from, or exists already (409)."""


@contextlib.contextmanager
def _conflicts() -> Iterator[None]:
    """A 409 of the calls inside as Conflict, with the API server's message."""
    try:
        yield
    except ApiException as exc:
        if exc.status == 409:
            raise Conflict(_api_message(exc)) from exc
        raise


def patch_evaluationjob_status(namespace: str, name: str, status: dict[str, Any],
                               resource_version: str | None) -> dict[str, Any]:
    """Merge-patch the status subresource (null removes a field); returns the job as written.

    With ``resource_version`` the write applies only to that version of the job (optimistic concurrency:
    a status derived from an older job, or written beside a second operator, is refused as Conflict).
    """
    body: dict[str, Any] = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    with _conflicts():
        return _json(_custom().patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, body, _preload_content=False, _content_type=MERGE_PATCH))


def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    return _found(lambda: _batch().read_namespaced_job(name, namespace, _preload_content=False))


class Refused(Exception):
    """The API server refused an object (4xx other than a conflict): its message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or str(exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def create_job(namespace: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create the Job unless one of that name exists; returns (the Job, whether this call created it).

    Raises Refused for a 4xx other than a conflict (invalid, forbidden, over quota, rate-limited) with the
    API server's own message: the caller decides which of them wait and which fail the job.
    """
    try:
        return _json(_batch().create_namespaced_job(namespace, body, _preload_content=False)), True
    except ApiException as exc:
        if exc.status != 409:
            if exc.status is not None and 400 <= exc.status < 500:
                raise Refused(exc.status, _api_message(exc)) from exc
            raise
    existing = get_job(namespace, body["metadata"]["name"])
    if existing is None:  # deleted between the two calls; the next reconcile creates it
        raise RuntimeError(f"Job {body['metadata']['name']} was being deleted; retrying")
    return existing, False


def patch_job(namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    return _json(_batch().patch_namespaced_job(name, namespace, patch, _preload_content=False,
                                               _content_type=MERGE_PATCH))


def delete_job(namespace: str, name: str, uid: str) -> bool:
    """Delete the Job of that uid (never a namesake created since) and, in the background, its pods;
    False when it was already gone."""
    try:
        # in the body: with a body the query's propagationPolicy is not applied, and a Job's default
        # policy orphans its pods (found on a real control plane)
        _batch().delete_namespaced_job(name, namespace, body=client.V1DeleteOptions(
            propagation_policy="Background", preconditions=client.V1Preconditions(uid=uid)))
        return True
    except ApiException as exc:
        if exc.status in (404, 409):
            return False
        raise


#: Kueue's API group and the versions that serve Workloads (v1beta2 from Kueue 0.15, v1beta1 before).
KUEUE_GROUP, KUEUE_VERSIONS = "kueue.x-k8s.io", ("v1beta2", "v1beta1")


def list_workloads(namespace: str, job_uid: str) -> list[dict[str, Any]]:
    """Kueue's Workloads of one Job (by Kueue's job-uid label); none where Kueue is not installed."""
    if not job_uid:
        return []
    for version in KUEUE_VERSIONS:
        try:
            resp = _custom().list_namespaced_custom_object(
                KUEUE_GROUP, version, namespace, "workloads", label_selector=f"kueue.x-k8s.io/job-uid={job_uid}",
                _preload_content=False)
        except ApiException as exc:
            if exc.status in (403, 404):  # no Kueue (or not this version), or no read rule for Workloads
                continue
            raise
        return list(_json(resp).get("items") or [])
    return []


def post_event(owner: dict[str, Any], event_type: str, reason: str, message: str, when: str) -> None:
    """Record a core/v1 Event on ``owner`` (the EvaluationJob), shown by `kubectl describe`."""
    meta = owner.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.get('name')}.{os.urandom(6).hex()}", "namespace": namespace},
        "involvedObject": {k: v for k, v in {
            "apiVersion": owner.get("apiVersion"), "kind": owner.get("kind"), "name": meta.get("name"),
            "namespace": namespace, "uid": meta.get("uid")}.items() if v},
        "reason": reason,
        "message": message[:1024],
        "type": event_type,
        "source": {"component": "assay-operator"},
        "reportingComponent": f"{GROUP}/operator",
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": when,
        "lastTimestamp": when,
        "count": 1,
    }
    _core().create_namespaced_event(namespace, body, _preload_content=False)


def get_lease(namespace: str, name: str) -> dict[str, Any] | None:
    """The coordination.k8s.io Lease of leader election (``leader``), None if absent."""
    return _found(lambda: _coordination().read_namespaced_lease(name, namespace, _preload_content=False))


def create_lease(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create the Lease; Conflict when another replica created it first."""
    with _conflicts():
        return _json(_coordination().create_namespaced_lease(namespace, body, _preload_content=False))


def replace_lease(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Replace the Lease at the resourceVersion in ``body``; Conflict when another replica wrote since."""
    with _conflicts():
        return _json(_coordination().replace_namespaced_lease(body["metadata"]["name"], namespace, body,
                                                              _preload_content=False))
