"""Target 7: the real operator (``kopf run -m assay_operator.main``, its own process) against kmock's
KubernetesEmulator (in this process): N EvaluationJobs of 8 shards created at once.

Measured: time from each EvaluationJob's creation until its first child Job (resolve) exists (median,
p99; polled every 1 s, so +-1 s), API requests the operator sent per job (every request the emulator saw,
minus this harness's own, which carry the user agent ``assay-bench``), the operator's peak RSS (VmHWM);
then, with nothing changing, the API requests per job per second of the resync loop (the operator reads
no store: progress comes from the Job objects). The resync interval is the operator's default (10 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import REPO, Row

NS = "evals"
GROUP, VERSION, PLURAL = "assay.dev", "v1alpha1", "evaluationjobs"
UA = "assay-bench"
SHARDS = 8


class Emulator:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        import kmock

        self.stopping = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            verbs = {"list", "watch", "get", "create", "patch", "update", "delete"}
            res = emulator.resources
            res[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
                kind="EvaluationJob", singular="evaluationjob", namespaced=True, verbs=verbs,
                subresources={"status"}, shortnames={"evaljob"})
            res["batch/v1/jobs"] = kmock.ResourceInfo(kind="Job", namespaced=True, verbs=verbs, subresources={"status"})
            for plural, kind in (("pods", "Pod"), ("events", "Event"), ("secrets", "Secret")):
                res[f"v1/{plural}"] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=verbs)
            res["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=verbs)
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self.ready.set()
            await self.stopping.wait()

    def operator_requests(self) -> int:
        return sum(1 for r in list(self.emulator._requests) if r.headers.get("User-Agent", "") != UA
                   and r.headers.get("user-agent", "") != UA)

    def __enter__(self) -> Emulator:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)


def _http(url: str, method: str = "GET", body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"User-Agent": UA, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def _inputs(store: Path) -> None:
    from assay import layout, storage
    from assay.packages import ModelManifest
    from assay.shards import DatasetManifest, ShardInfo

    model = ModelManifest(name="m", version="sha256:model", handler="h:H", evaluator="coco", files=[],
                          package_bytes=1, package_sha256="x")
    storage.write_text(str(store / "models" / "m" / "manifest.json"), model.to_json())
    ds = DatasetManifest(name="d", version="sha256:data", samples=SHARDS * 10, label_schema={},
                         shards=[ShardInfo(name=layout.shard_name(i), samples=10, bytes=1, sha256="x",
                                           labels_sha256="y", first=i * 10) for i in range(SHARDS)])
    storage.write_text(str(store / "datasets" / "d" / "manifest.json"), ds.to_json())


def _manifest(store: Path, name: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EvaluationJob", "metadata": {"name": name, "namespace": NS, "uid": str(uuid.uuid4()), "generation": 1,
                         "resourceVersion": "1"},  # the emulator assigns none itself
            "spec": {"model": {"uri": str(store / "models" / "m")}, "dataset": {"uri": str(store / "datasets" / "d")},
                     "output": {"uri": str(store / name)}, "runtime": {"image": "registry.example/runner:bench"},
                     "ppl": {"workers": 2, "batchSize": 4}}}


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(work: Path, n_jobs: int, progress_seconds: float, deadline: float) -> dict:
    """One run with ``n_jobs`` jobs; returns the figures."""
    store = work / f"op-{n_jobs}"
    store.mkdir(parents=True)
    _inputs(store)
    with Emulator() as emu:
        kubeconfig = work / f"kubeconfig-{n_jobs}"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": emu.url}}],
            "users": [{"name": "kmock", "user": {"token": "bench"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": NS}}]}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSAY_OPERATOR_", "KUBERNETES_"))}
        env.update(KUBECONFIG=str(kubeconfig), ASSAY_OPERATOR_API_SCANNING="false", ASSAY_STORAGE_RETRIES="1")
        log = open(work / f"operator-{n_jobs}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", NS,
                                 "-m", "assay_operator.main"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(3)  # let kopf log in and start watching
            base_requests = emu.operator_requests()
            idle_hwm = _hwm_mb(proc.pid)
            names = [f"job-{i:04d}" for i in range(n_jobs)]
            created: dict[str, float] = {}
            url = f"{emu.url}/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}"

            def create(name: str) -> None:
                _http(url, "POST", _manifest(store, name))
                created[name] = time.monotonic()

            t0 = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(create, names))
            seen: dict[str, float] = {}
            jobs_url = f"{emu.url}/apis/batch/v1/namespaces/{NS}/jobs"
            while len(seen) < n_jobs and time.monotonic() - t0 < deadline:
                now = time.monotonic()
                for item in _http(jobs_url).get("items") or []:
                    owner = item["metadata"]["name"].removesuffix("-resolve")
                    if owner in created and owner not in seen:
                        seen[owner] = now
                time.sleep(1.0)  # listing every Job is costly for the emulator
            all_done = time.monotonic() - t0
            lat = sorted(seen[n] - created[n] for n in seen)
            create_requests = emu.operator_requests() - base_requests
            out = {"jobs": n_jobs, "with_ppl_job": len(seen), "all_seconds": all_done,
                   "median_s": statistics.median(lat) if lat else None,
                   "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
                   "requests_per_job": create_requests / n_jobs, "idle_hwm_mb": idle_hwm,
                   "hwm_mb": _hwm_mb(proc.pid)}
            # phase 2: nothing changes; what does the resync loop cost?
            r0, t1 = emu.operator_requests(), time.monotonic()
            time.sleep(progress_seconds)
            window = time.monotonic() - t1
            out["progress_requests_per_job_s"] = (emu.operator_requests() - r0) / n_jobs / window
            out["hwm_progress_mb"] = _hwm_mb(proc.pid)
            out["progress_window_s"] = window
            return out
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def run(work: Path, sizes=(100, 250), progress_seconds: float = 20, deadline: float = 150) -> tuple[list[Row], dict]:
    got = {n: measure(work, n, progress_seconds, deadline) for n in sizes}
    small, big = got[sizes[0]], got[sizes[-1]]
    growth = big["requests_per_job"] / small["requests_per_job"]
    done = big["with_ppl_job"] == big["jobs"]
    rows = [
        Row(f"7 operator: {big['jobs']} jobs x {SHARDS} shards", "median / p99 s to first Job",
            big["median_s"], "(recorded)", None,
            f"p99 {big['p99_s']:.1f}s; all {big['with_ppl_job']}/{big['jobs']} in {big['all_seconds']:.0f}s"
            + ("" if done else " (deadline hit)")),
        Row("7 operator: requests per job", f"{sizes[-1]} / {sizes[0]} jobs", growth, "<= 1.10 (no growth)",
            growth <= 1.10, f"{small['requests_per_job']:.1f} vs {big['requests_per_job']:.1f} requests per job "
            "until its first Job exists"),
        Row("7 operator: memory", f"peak RSS MB at {big['jobs']} jobs", big["hwm_progress_mb"], "(recorded)", None,
            f"idle {big['idle_hwm_mb']:.0f} MB; {sizes[0]} jobs {small['hwm_progress_mb']:.0f} MB"),
        Row("7 operator: idle resync", "requests per job per s", big["progress_requests_per_job_s"],
            "(recorded)", None, f"{sizes[0]} jobs: {small['progress_requests_per_job_s']:.2f}/s over "
            f"{big['progress_window_s']:.0f}s"),
    ]
    return rows, got
