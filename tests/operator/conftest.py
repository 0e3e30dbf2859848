"""Harness: the real operator (kopf) against kmock's KubernetesEmulator, with the Job controller faked.

- ``cluster``: a fresh in-memory API server (KubernetesEmulator) on a local port, served from its own
  thread and event loop, plus a kubeconfig pointing at it (KUBECONFIG), so kopf's login, our
  ``assay_operator.kube`` and this harness all speak real HTTP to it. The emulator stores objects but
  runs no controllers: tests play the Job controller by patching Job statuses and creating pods.
- ``operator``: a factory of ``KopfRunner(["run", "-m", "assay_operator.main", ...])`` context
  managers; leaving one stops the operator, entering another "restarts" it.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Before assay_operator.main is imported: its timer interval is read at import time.
os.environ["ASSAY_OPERATOR_RESYNC_SECONDS"] = "0.2"
# kmock 0.8 cannot parse GET /api/v1/namespaces (it takes "namespaces" for a namespace prefix), so
# kopf must not list namespaces: it then trusts --namespace as given.
os.environ["ASSAY_OPERATOR_API_SCANNING"] = "false"

import kmock  # noqa: E402
import pytest  # noqa: E402
from kopf.testing import KopfRunner  # noqa: E402
from kubernetes import client  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from kubernetes.config import kube_config  # noqa: E402

from assay import layout, storage  # noqa: E402
from assay_operator import kube  # noqa: E402

NS = "evals"
GROUP, VERSION, PLURAL = "assay.dev", "v1alpha1", "evaluationjobs"
MERGE = "application/merge-patch+json"


class Emulator:
    """A KubernetesEmulator served on 127.0.0.1 from a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)
        self.url = ""

    async def _serve(self) -> None:
        self.stopping = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            res = emulator.resources
            verbs = {"list", "watch", "get", "create", "patch", "update", "delete"}
            res[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
                kind="EvaluationJob", singular="evaluationjob", namespaced=True, verbs=verbs,
                subresources={"status"}, shortnames={"evaljob"})
            res["batch/v1/jobs"] = kmock.ResourceInfo(kind="Job", namespaced=True, verbs=verbs,
                                                      subresources={"status"})
            for plural, kind in (("pods", "Pod"), ("events", "Event"), ("secrets", "Secret")):
                res[f"v1/{plural}"] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=verbs)
            # kopf waits for the namespaces resource to be discoverable before it watches anything.
            res["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=verbs)
            self.url = str(server.url).rstrip("/")
            self.ready.set()
            await self.stopping.wait()

    def __enter__(self) -> Emulator:
        self.thread.start()
        assert self.ready.wait(10), "the emulator did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)


class Cluster:
    """What a test sees and does: kubectl plus the Job controller's and kubelet's status writes."""

    def __init__(self, url: str, store: Path) -> None:
        cfg = client.Configuration()
        cfg.host = url
        self.api = client.ApiClient(cfg)
        self.custom = client.CustomObjectsApi(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.store = store

    # ---- EvaluationJobs

    def manifest(self, name: str = "eval", **spec: Any) -> dict[str, Any]:
        out = self.store / name
        base: dict[str, Any] = {
            "model": {"uri": str(self.store / "models" / "m")},
            "dataset": {"uri": str(self.store / "datasets" / "d")},
            "output": {"uri": str(out)},
            "runtime": {"image": "registry.example/assay-runner:test"},
            "ppl": {"workers": 2, "maxRetriesPerShard": 2, "batchSize": 4},
        }
        base.update(spec)
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EvaluationJob",
                "metadata": {"name": name, "namespace": NS, "uid": str(uuid.uuid4()), "generation": 1,
                             "resourceVersion": "1"},
                "spec": base}

    def apply(self, manifest: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest)

    def evaljob(self, name: str = "eval") -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def status(self, name: str = "eval") -> dict[str, Any]:
        return (self.evaljob(name) or {}).get("status") or {}

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        gen = int((self.evaljob(name) or {}).get("metadata", {}).get("generation") or 1)
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name,
                                                   {"metadata": {"generation": gen + 1}, "spec": spec},
                                                   _content_type=MERGE)

    def delete(self, name: str = "eval") -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)

    # ---- Jobs, pods, events (the Job controller's and kubelet's side)

    def jobs(self) -> dict[str, dict[str, Any]]:
        raw = json.loads(self.batch.list_namespaced_job(NS, _preload_content=False).data)
        return {j["metadata"]["name"]: j for j in raw.get("items") or []}

    def job_status(self, name: str, **st: Any) -> None:
        self.batch.patch_namespaced_job_status(name, NS, {"status": st}, _content_type=MERGE)

    def complete(self, name: str, completions: int = 1) -> None:
        self.job_status(name, succeeded=completions, active=0, completedIndexes=f"0-{completions - 1}",
                        conditions=[{"type": "SuccessCriteriaMet", "status": "True"},
                                    {"type": "Complete", "status": "True"}])

    def add_pod(self, name: str, job_name: str, role: str, evaljob: str = "eval", **status: Any) -> None:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": NS, "creationTimestamp": "2020-01-01T00:00:00Z",
                            "labels": {"assay.dev/job": evaljob, "assay.dev/role": role, "job-name": job_name}},
               "spec": {"containers": [{"name": "runner", "image": "x"}]},
               "status": status}
        self.core.create_namespaced_pod(NS, pod)

    def events(self) -> list[dict[str, Any]]:
        raw = json.loads(self.core.list_namespaced_event(NS, _preload_content=False).data)
        return raw.get("items") or []

    # ---- the output store (a local folder, written as the runner would)

    def write_inputs(self, shards: int = 4, samples_per_shard: int = 10) -> None:
        """Real manifests (the formats `assay model build` and `assay dataset build` write)."""
        from assay.packages import ModelManifest
        from assay.shards import DatasetManifest, ShardInfo

        model = ModelManifest(name="m", version="sha256:model", handler="h:H", evaluator="coco", files=[],
                              package_bytes=1, package_sha256="x")
        storage.write_text(str(self.store / "models" / "m" / "manifest.json"), model.to_json())
        dataset = DatasetManifest(
            name="d", version="sha256:data", samples=shards * samples_per_shard, label_schema={},
            shards=[ShardInfo(name=layout.shard_name(i), samples=samples_per_shard, bytes=1, sha256="x",
                              labels_sha256="y", first=i * samples_per_shard) for i in range(shards)])
        storage.write_text(str(self.store / "datasets" / "d" / "manifest.json"), dataset.to_json())

    def write_progress(self, name: str, worker: int, done: int, total: int, shards_done: int,
                       shards_total: int) -> None:
        storage.write_text(layout.progress_uri(str(self.store / name), worker), json.dumps({
            "worker": worker, "samplesDone": done, "samplesTotal": total, "samplesPerSecond": 5.0,
            "shardsDone": shards_done, "shardsTotal": shards_total, "updatedAt": "2999-01-01T00:00:00Z"}))

    def write_metrics(self, name: str = "eval") -> None:
        summary = {f"bbox/AP{i:02d}": i / 100 for i in range(40)} | {"bbox/AP": 0.8123}
        storage.write_text(layout.metrics_uri(str(self.store / name)), json.dumps({
            "evaluator": "coco", "summary": summary, "headline": {"name": "bbox/AP", "value": 0.8123},
            "full": {"big": list(range(100))}, "model": {"uri": "m", "version": "sha256:model"},
            "dataset": {"uri": "d", "version": "sha256:data", "samples": 40}}))


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; return its value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


@pytest.fixture(autouse=True)
def _fail_fast_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator reads stores on every resync; here a missing object should not be retried. Scoped to
    these tests (an environment variable set at import leaked into every later test of the session)."""
    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 1)


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with Emulator() as emu:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": emu.url}}],
            "users": [{"name": "kmock", "user": {"token": "test"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": NS}}],
        }))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        # The client reads KUBECONFIG once, at import; kopf's login uses that default.
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        kube.reset()
        (tmp_path / "store").mkdir()
        yield Cluster(emu.url, tmp_path / "store")
        kube.reset()


@pytest.fixture
def operator(cluster: Cluster) -> Callable[[], KopfRunner]:
    """``with operator(): ...`` runs the operator for the block; use it again to restart."""

    def start() -> KopfRunner:
        return KopfRunner(["run", "--standalone", "--namespace", NS, "-m", "assay_operator.main"], timeout=30)

    return start
