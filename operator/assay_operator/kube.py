"""The only module of the operator that calls the Kubernetes API (the official ``kubernetes`` client).

Objects go in and out as plain dicts (camelCase, as in YAML), so the pure modules never see client
models. Creates are create-if-absent (409 returns the existing object), deletes tolerate 404: every
call is safe to repeat after a restart.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

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


def _json(resp: Any) -> dict[str, Any]:
    return json.loads(resp.data or b"{}")


def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _json(_batch().read_namespaced_job(name, namespace, _preload_content=False))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def create_job(namespace: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create the Job unless one of that name exists; returns (the Job, whether this call created it)."""
    try:
        return _json(_batch().create_namespaced_job(namespace, body, _preload_content=False)), True
    except ApiException as exc:
        if exc.status != 409:
            raise
    existing = get_job(namespace, body["metadata"]["name"])
    if existing is None:  # deleted between the two calls; the next reconcile creates it
        raise RuntimeError(f"Job {body['metadata']['name']} was being deleted; retrying")
    return existing, False


def patch_job(namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    return _json(_batch().patch_namespaced_job(name, namespace, patch, _preload_content=False,
                                               _content_type=MERGE_PATCH))


def delete_job(namespace: str, name: str) -> bool:
    """Delete a Job and (in the background) its pods; False when it was already gone."""
    try:
        _batch().delete_namespaced_job(name, namespace, propagation_policy="Background")
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def list_pods(namespace: str, label_selector: str) -> list[dict[str, Any]]:
    resp = _core().list_namespaced_pod(namespace, label_selector=label_selector, _preload_content=False)
    return list(_json(resp).get("items") or [])


def read_secret(namespace: str, name: str) -> dict[str, str] | None:
    """The decoded data of a Secret, or None when it does not exist."""
    try:
        raw = _json(_core().read_namespaced_secret(name, namespace, _preload_content=False))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    out = {k: base64.b64decode(v).decode("utf-8") for k, v in (raw.get("data") or {}).items()}
    out.update(raw.get("stringData") or {})
    return out


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
        "reportingComponent": "assay.dev/operator",
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": when,
        "lastTimestamp": when,
        "count": 1,
    }
    _core().create_namespaced_event(namespace, body, _preload_content=False)
