"""A kubelet that runs pods as local processes: enough of one for a real control plane to drive.

It registers Nodes with client certificates of their own (so the API server's Node authorizer and
NodeRestriction judge every call it makes, as for a real kubelet), polls the pods bound to them and
runs each container's command in a private mount namespace (``unshare -m``): the pod's volumes are
bind-mounted at their real paths (/tmp, /var/cache/assay, the service-account token folder), the
root filesystem is read-only when the container asks for it, and the process runs with no
capabilities and no_new_privs. The user stays root: the test image's Python lives under /root (0700),
so runAsUser is left to Pod Security admission, which checks it on the API server.

Images are an allow-list: each known image names the environment it brings (PATH to this venv's
python, PYTHONPATH to this checkout); any other image fails as ErrImagePull, then ImagePullBackOff.
Container logs are files, served to the API server (``kubectl logs``) on the nodes' kubelet port.
httpGet readiness probes decide the Ready condition. Not done: liveness and startup probes, resource limits (``oom_kill`` reports OOMKilled on request), init containers,
image pull secrets, exec/attach/port-forward, pod IPs other than 127.0.0.1.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import math
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

STRATEGIC = "application/strategic-merge-patch+json"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(resp: Any) -> dict[str, Any]:
    import json

    return json.loads(resp.data or b"{}")


class ConfigError(Exception):
    """The container cannot start as configured (a real kubelet's CreateContainerConfigError)."""


@dataclasses.dataclass
class Node:
    name: str
    capacity: dict[str, str]
    labels: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Container:
    spec: dict[str, Any]
    proc: subprocess.Popen | None = None
    log: Path | None = None
    message_file: Path | None = None
    started_at: str = ""
    restarts: int = 0
    terminated: dict[str, Any] | None = None
    last_terminated: dict[str, Any] | None = None
    oom: bool = False
    restart_at: float = 0.0
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    volumes: dict[str, Path] = dataclasses.field(default_factory=dict)
    ready: bool = False
    next_probe: float = 0.0


@dataclasses.dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    node: str
    folder: Path
    containers: list[Container] = dataclasses.field(default_factory=list)
    waiting: tuple[str, str] | None = None  # (reason, message) while no container could start
    waiting_since: float = 0.0
    stopping: bool = False
    unreported: bool = False  # the last status write failed; the next poll repeats it


class Kubelet:
    def __init__(self, plane: Any, nodes: list[Node], images: dict[str, dict[str, str]], folder: Path,
                 admin: client.ApiClient, poll: float = 0.3) -> None:
        self.plane, self.nodes, self.images, self.folder, self.poll = plane, nodes, images, folder, poll
        self.admin = admin
        self.pods: dict[str, PodRun] = {}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.apis: dict[str, client.CoreV1Api] = {}
        self.tools = {t: shutil.which(t) or t for t in ("unshare", "setpriv", "mount", "sh")}

    # ------------------------------------------------------------------------------------- nodes

    def start(self) -> Kubelet:
        self._serve_logs()
        for node in self.nodes:
            cert, key = self.plane.pki.issue(f"node-{node.name}", f"system:node:{node.name}", ("system:nodes",))
            cfg = client.Configuration()
            cfg.host, cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file = (self.plane.server, str(self.plane.pki.ca),
                                                                      str(cert), str(key))
            api = self.apis[node.name] = client.CoreV1Api(client.ApiClient(cfg))
            self._register(api, node)
            thread = threading.Thread(target=self._loop, args=(node.name,), daemon=True, name=f"kubelet-{node.name}")
            thread.start()
            self.threads.append(thread)
        return self

    def _register(self, api: client.CoreV1Api, node: Node) -> None:
        labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64"} | node.labels
        api.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name, "labels": labels}})
        stamp = now()
        conditions = [{"type": t, "status": "False", "reason": f"Kubelet Has No{t}", "lastHeartbeatTime": stamp,
                       "lastTransitionTime": stamp} for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": "process kubelet is posting ready status", "lastHeartbeatTime": stamp,
                           "lastTransitionTime": stamp})
        api.patch_node_status(node.name, {"status": {
            "capacity": node.capacity, "allocatable": node.capacity, "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.server.server_address[1]}},
            "nodeInfo": {"kubeletVersion": "v0.0.0-process", "containerRuntimeVersion": "process://1",
                         "operatingSystem": "linux", "architecture": "amd64", "machineID": "", "systemUUID": "",
                         "bootID": "", "kernelVersion": "", "osImage": "", "kubeProxyVersion": ""}}},
            _content_type=STRATEGIC)
        # The TaintNodesByCondition admission plugin taints a new Node not-ready; the node lifecycle
        # controller (not run here: no heartbeats to watch) would lift it once Ready, so the admin does.
        client.CoreV1Api(self.admin).patch_node(node.name, {"spec": {"taints": None}},
                                                _content_type="application/merge-patch+json")

    def _serve_logs(self) -> None:
        """GET /containerLogs/NAMESPACE/POD/CONTAINER?tailLines=N over TLS, as the API server asks a kubelet."""
        kubelet = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                parts = url.path.strip("/").split("/")
                path = kubelet.log_path(*parts[1:4]) if parts[0] == "containerLogs" and len(parts) == 4 else None
                if path is None or not path.exists():
                    self.send_error(404, "container not found")
                    return
                lines = path.read_bytes().splitlines(keepends=True)
                tail = urllib.parse.parse_qs(url.query).get("tailLines")
                body = b"".join(lines[-int(tail[0]):] if tail else lines)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self.plane.pki.issue("kubelet-serving", "kubelet", server=True))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True, name="kubelet-logs").start()

    def stop(self) -> None:
        self.server.shutdown()
        self.stopping.set()
        for thread in self.threads:
            thread.join(5)
        with self.lock:
            runs = list(self.pods.values())
        for run in runs:
            self._kill(run, grace=2)

    def log_path(self, namespace: str, pod: str, container: str | None = None) -> Path | None:
        with self.lock:
            for run in self.pods.values():
                if (run.namespace, run.name) == (namespace, pod):
                    c = next((c for c in run.containers if container in (None, c.spec["name"])), None)
                    return c.log if c else None
        return None

    def oom_kill(self, namespace: str, pod: str) -> None:
        """Kill the pod's containers as the kernel's OOM killer would (reported as OOMKilled, 137)."""
        with self.lock:
            for run in self.pods.values():
                if (run.namespace, run.name) == (namespace, pod):
                    for c in run.containers:
                        if c.proc and c.proc.poll() is None:
                            c.oom = True
                            os.killpg(c.proc.pid, signal.SIGKILL)

    # -------------------------------------------------------------------------------------- loop

    def _loop(self, node: str) -> None:
        api = self.apis[node]
        while not self.stopping.is_set():
            try:
                items = _json(api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}",
                                                              _preload_content=False)).get("items") or []
                seen = set()
                for pod in items:
                    seen.add(pod["metadata"]["uid"])
                    self._sync(api, node, pod)
                with self.lock:
                    gone = [r for r in self.pods.values() if r.node == node and r.uid not in seen]
                for run in gone:  # force-deleted: nothing left to report to
                    self._kill(run, grace=0)
                    with self.lock:
                        self.pods.pop(run.uid, None)
            except Exception as exc:  # noqa: BLE001 - a kubelet keeps going; the next poll retries
                print(f"kubelet {node}: {type(exc).__name__}: {exc}")
            self.stopping.wait(self.poll)

    def _sync(self, api: client.CoreV1Api, node: str, pod: dict[str, Any]) -> None:
        meta, phase = pod["metadata"], (pod.get("status") or {}).get("phase")
        with self.lock:
            run = self.pods.get(meta["uid"])
        if meta.get("deletionTimestamp"):
            if run is None or not run.stopping:
                self._begin_stop(api, node, pod, run)
            return
        if phase in ("Succeeded", "Failed"):
            return
        if run is None:
            run = PodRun(meta["uid"], meta["namespace"], meta["name"], node, self.folder / meta["uid"])
            with self.lock:
                self.pods[run.uid] = run
            self._start(api, pod, run)
            self._probe(run)
            self._report(api, pod, run)
        elif run.waiting is not None:
            if run.waiting[0] == "ErrImagePull" and time.monotonic() - run.waiting_since > 1:
                run.waiting = ("ImagePullBackOff", run.waiting[1].replace("ErrImagePull", "ImagePullBackOff"))
                self._report(api, pod, run)
            elif run.waiting[0] == "CreateContainerConfigError" and time.monotonic() - run.waiting_since > 3:
                self._start(api, pod, run)  # the Secret or ConfigMap may exist now
                self._report(api, pod, run)
        elif self._reap(pod, run) | self._probe(run) or run.unreported:
            self._report(api, pod, run)

    # ------------------------------------------------------------------------------- containers

    def _start(self, api: client.CoreV1Api, pod: dict[str, Any], run: PodRun) -> None:
        spec = pod["spec"]
        containers = spec.get("containers") or []
        unknown = [c["image"] for c in containers if c.get("image") not in self.images]
        if unknown:
            msg = (f'Failed to pull image "{unknown[0]}": ErrImagePull: the image is not in the process '
                   "kubelet's allow-list")
            run.waiting, run.waiting_since = ("ErrImagePull", msg), time.monotonic()
            return
        try:
            if spec.get("initContainers"):
                raise ConfigError("init containers are not supported by the process kubelet")
            volumes = self._volumes(api, pod, run)
            envs = [self._env(api, pod, c) for c in containers]
            run.containers = [Container(spec=c) for c in containers]
            for container, env in zip(run.containers, envs, strict=True):
                self._launch(pod, run, container, env, volumes)
        except (ConfigError, ApiException) as exc:
            reason = exc.reason if isinstance(exc, ApiException) else str(exc)
            run.waiting, run.waiting_since = ("CreateContainerConfigError", str(reason)), time.monotonic()
            return
        run.waiting = None

    def _launch(self, pod: dict[str, Any], run: PodRun, c: Container, env: dict[str, str],
                volumes: dict[str, Path]) -> None:
        spec, name = c.spec, c.spec["name"]
        c.env, c.volumes = env, volumes
        cdir = run.folder / "containers" / name
        cdir.mkdir(parents=True, exist_ok=True)
        c.log = cdir / f"{c.restarts}.log"
        c.message_file = cdir / "termination-log"
        c.message_file.write_text("")
        mounts: list[tuple[Path, str, bool]] = []
        for m in spec.get("volumeMounts") or []:
            if m["name"] not in volumes:
                raise ConfigError(f"volume {m['name']} not found")
            src = volumes[m["name"]] / m.get("subPath", "")
            mounts.append((src, m["mountPath"], bool(m.get("readOnly"))))
        mounts.append((c.message_file, spec.get("terminationMessagePath") or "/dev/termination-log", False))
        secctx = spec.get("securityContext") or {}
        script = ["set -e"]
        image = self.images[spec["image"]]
        # The test image's interpreter and code are host folders; when one lies below a mount point (a
        # checkout under /tmp, say) it is held aside first and bound back over the pod's volume.
        keep = _image_paths(image, [dst for _, dst, _ in mounts])
        holds = []
        for i, path in enumerate(keep):
            hold = run.folder / "hold" / f"{name}-{i}"
            hold.mkdir(parents=True, exist_ok=True)
            script.append(f"{self.tools['mount']} --bind {shlex.quote(path)} {shlex.quote(str(hold))}")
            holds.append((hold, path))
        for src, dst, ro in mounts:
            if str(self.folder).startswith(dst.rstrip("/") + "/"):
                raise ConfigError(f"mountPath {dst} would hide the kubelet's folder {self.folder}")
            if src.is_dir():
                os.makedirs(dst, exist_ok=True)  # the mount point, on the host
            elif not os.path.exists(dst):
                Path(dst).touch()
            script.append(f"{self.tools['mount']} --bind {shlex.quote(str(src))} {shlex.quote(dst)}")
            if ro:
                script.append(f"{self.tools['mount']} -o remount,bind,ro {shlex.quote(dst)}")
        for hold, path in holds:
            script.append(f"mkdir -p {shlex.quote(path)}")
            script.append(f"{self.tools['mount']} --bind {shlex.quote(str(hold))} {shlex.quote(path)}")
        if secctx.get("readOnlyRootFilesystem"):
            script.append(f"{self.tools['mount']} -o remount,bind,ro /")
        script.append('exec "$@"')
        argv = list(spec.get("command") or []) + list(spec.get("args") or [])
        if not argv:
            raise ConfigError(f"container {name} has no command and the test image has no entrypoint")
        cmd = [self.tools["unshare"], "-m", "--propagation", "private", "--", self.tools["sh"], "-c",
               "\n".join(script), "sh", self.tools["setpriv"], "--pdeathsig", "KILL", "--no-new-privs",
               "--inh-caps=-all", "--bounding-set=-all", "--", *argv]
        with open(c.log, "wb") as log:
            c.proc = subprocess.Popen(cmd, env=env, cwd=spec.get("workingDir") or image.get("WORKDIR", "/"),
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        c.started_at, c.terminated, c.oom, c.ready, c.next_probe = now(), None, False, False, 0.0

    def _reap(self, pod: dict[str, Any], run: PodRun) -> bool:
        """Notice exited containers (restarting them per restartPolicy); True when the status changed."""
        changed = False
        policy = pod["spec"].get("restartPolicy") or "Always"
        for c in run.containers:
            if c.proc is None or c.terminated is not None:
                if c.terminated is not None and c.restart_at and time.monotonic() >= c.restart_at:
                    c.last_terminated, c.restart_at = c.terminated, 0.0
                    c.restarts += 1
                    self._launch(pod, run, c, c.env, c.volumes)
                    changed = True
                continue
            if c.proc.poll() is None:
                continue
            c.terminated = self._terminated(c)
            if policy == "Always" or (policy == "OnFailure" and c.terminated["exitCode"] != 0):
                c.restart_at = time.monotonic() + min(10.0, 1.0 * 2 ** c.restarts)
            changed = True
        return changed

    def _probe(self, run: PodRun) -> bool:
        """Run due httpGet readiness probes (no probe: ready once running); True when readiness changed."""
        changed = False
        for c in run.containers:
            running = c.proc is not None and c.terminated is None
            probe = c.spec.get("readinessProbe")
            ready = running
            if running and probe and "httpGet" in probe:
                if time.monotonic() < c.next_probe:
                    continue
                started = c.next_probe == 0.0
                c.next_probe = time.monotonic() + (probe.get("initialDelaySeconds", 0) if started
                                                   else probe.get("periodSeconds", 10))
                ready = False if started and probe.get("initialDelaySeconds") else self._http_ok(c, probe)
            changed |= ready != c.ready
            c.ready = ready
        return changed

    @staticmethod
    def _http_ok(c: Container, probe: dict[str, Any]) -> bool:
        get = probe["httpGet"]
        port = get["port"]
        if isinstance(port, str):  # a named container port
            port = next(p["containerPort"] for p in c.spec.get("ports") or [] if p.get("name") == port)
        url = f"{get.get('scheme', 'HTTP').lower()}://127.0.0.1:{port}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=probe.get("timeoutSeconds", 1)) as resp:
                return 200 <= resp.status < 400
        except OSError:
            return False

    def _terminated(self, c: Container) -> dict[str, Any]:
        code = c.proc.returncode
        code = 128 - code if code < 0 else code
        reason = "OOMKilled" if c.oom else "Completed" if code == 0 else "Error"
        message = c.message_file.read_text(errors="replace")[:4096] if c.message_file else ""
        if not message and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            lines = c.log.read_text(errors="replace").splitlines()[-80:] if c.log else []
            message = "\n".join(lines)[-2048:]
        out = {"exitCode": code, "reason": reason, "startedAt": c.started_at, "finishedAt": now(),
               "containerID": f"process://{c.proc.pid}"}
        return out | ({"message": message} if message else {})

    # ---------------------------------------------------------------------------------- deletion

    def _begin_stop(self, api: client.CoreV1Api, node: str, pod: dict[str, Any], run: PodRun | None) -> None:
        if run is None:
            run = PodRun(pod["metadata"]["uid"], pod["metadata"]["namespace"], pod["metadata"]["name"], node,
                         self.folder / pod["metadata"]["uid"])
            with self.lock:
                self.pods[run.uid] = run
        run.stopping = True
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        grace = (pod["spec"].get("terminationGracePeriodSeconds") or 30) if grace is None else grace
        threading.Thread(target=self._finish_stop, args=(api, pod, run, grace), daemon=True).start()

    def _finish_stop(self, api: client.CoreV1Api, pod: dict[str, Any], run: PodRun, grace: float) -> None:
        was_running = any(c.proc is not None and c.terminated is None for c in run.containers)
        self._kill(run, grace)
        phase = (pod.get("status") or {}).get("phase")
        try:
            if was_running and phase not in ("Succeeded", "Failed"):
                for c in run.containers:
                    if c.terminated is None and c.proc is not None:
                        c.terminated = self._terminated(c)
                self._report(api, pod, run)
            # Grace 0 in the body: the API server reads DeleteOptions from the body when there is one.
            api.delete_namespaced_pod(run.name, run.namespace,
                                      body={"gracePeriodSeconds": 0, "preconditions": {"uid": run.uid}})
        except ApiException as exc:
            if exc.status != 404:
                print(f"kubelet: finishing {run.namespace}/{run.name}: {exc.status} {exc.reason} {exc.body}")

    def _kill(self, run: PodRun, grace: float) -> None:
        procs = [c.proc for c in run.containers if c.proc is not None and c.proc.poll() is None]
        for proc in procs:
            try:
                os.kill(proc.pid, signal.SIGTERM)  # to the container's "PID 1", as a runtime does
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    # ------------------------------------------------------------------------------------ status

    def _report(self, api: client.CoreV1Api, pod: dict[str, Any], run: PodRun) -> None:
        stamp = now()
        statuses = []
        for cspec in pod["spec"].get("containers") or []:
            c = next((c for c in run.containers if c.spec["name"] == cspec["name"]), None)
            st: dict[str, Any] = {"name": cspec["name"], "image": cspec.get("image", ""), "imageID": "",
                                  "restartCount": c.restarts if c else 0, "ready": False, "started": False}
            if c is None or c.proc is None:
                reason, message = run.waiting or ("ContainerCreating", "")
                st["state"] = {"waiting": {"reason": reason, "message": message}}
            elif c.terminated is not None and not c.restart_at:
                st["state"], st["containerID"] = {"terminated": c.terminated}, c.terminated["containerID"]
            elif c.terminated is not None:
                st["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}}
                st["lastState"] = {"terminated": c.terminated}
            else:
                st.update(ready=c.ready, started=True, containerID=f"process://{c.proc.pid}",
                          state={"running": {"startedAt": c.started_at}})
                if c.last_terminated:
                    st["lastState"] = {"terminated": c.last_terminated}
            statuses.append(st)
        states = [next(iter(s["state"])) for s in statuses]
        if all(s == "terminated" for s in states):
            codes = [s["state"]["terminated"]["exitCode"] for s in statuses]
            phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
        elif any(s in ("running", "terminated") for s in states) or any(s.get("restartCount") for s in statuses):
            phase = "Running"
        else:
            phase = "Pending"
        ready = "True" if all(s["ready"] for s in statuses) else "False"
        conditions = [{"type": t, "status": v, "lastTransitionTime": stamp, "lastProbeTime": None}
                      for t, v in (("PodReadyToStartContainers", "True"), ("Initialized", "True"),
                                   ("ContainersReady", ready), ("Ready", ready))]
        status = {"phase": phase, "conditions": conditions, "containerStatuses": statuses, "hostIP": "127.0.0.1",
                  "hostIPs": [{"ip": "127.0.0.1"}], "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                  "startTime": (pod.get("status") or {}).get("startTime") or stamp}
        run.unreported = True
        api.patch_namespaced_pod_status(run.name, run.namespace, {"status": status}, _content_type=STRATEGIC)
        run.unreported = False

    # ------------------------------------------------------------------------- volumes and env

    def _volumes(self, api: client.CoreV1Api, pod: dict[str, Any], run: PodRun) -> dict[str, Path]:
        ns, out = pod["metadata"]["namespace"], {}
        for vol in pod["spec"].get("volumes") or []:
            folder = run.folder / "volumes" / vol["name"]
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)  # as an emptyDir: writable by whatever user the container runs as
            if "emptyDir" in vol:
                pass
            elif "projected" in vol:
                for source in vol["projected"].get("sources") or []:
                    self._project(api, pod, source, folder)
            elif "secret" in vol:
                self._keys(self._secret(api, ns, vol["secret"]["secretName"], vol["secret"].get("optional")),
                           vol["secret"].get("items"), folder)
            elif "configMap" in vol:
                self._keys(self._config_map(api, ns, vol["configMap"]["name"], vol["configMap"].get("optional")),
                           vol["configMap"].get("items"), folder)
            else:
                raise ConfigError(f"volume {vol['name']}: only emptyDir, projected, secret and configMap are supported")
            out[vol["name"]] = folder
        return out

    def _project(self, api: client.CoreV1Api, pod: dict[str, Any], source: dict[str, Any], folder: Path) -> None:
        meta, ns = pod["metadata"], pod["metadata"]["namespace"]
        if "serviceAccountToken" in source:
            src = source["serviceAccountToken"]
            spec: dict[str, Any] = {"expirationSeconds": src.get("expirationSeconds") or 3600,
                                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"],
                                                       "uid": meta["uid"]}}
            if src.get("audience"):
                spec["audiences"] = [src["audience"]]
            sa = pod["spec"].get("serviceAccountName") or "default"
            token = _json(api.create_namespaced_service_account_token(sa, ns, {"spec": spec},
                                                                      _preload_content=False))
            (folder / src["path"]).write_text(token["status"]["token"])
        elif "configMap" in source:
            data = self._config_map(api, ns, source["configMap"]["name"], source["configMap"].get("optional"))
            self._keys(data, source["configMap"].get("items"), folder)
        elif "secret" in source:
            data = self._secret(api, ns, source["secret"]["name"], source["secret"].get("optional"))
            self._keys(data, source["secret"].get("items"), folder)
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                (folder / item["path"]).write_text(field_value(pod, item["fieldRef"]["fieldPath"]))

    @staticmethod
    def _keys(data: dict[str, str], items: list[dict[str, Any]] | None, folder: Path) -> None:
        for item in items or [{"key": k, "path": k} for k in data]:
            if item["key"] in data:
                path = folder / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(data[item["key"]])

    def _secret(self, api: client.CoreV1Api, ns: str, name: str, optional: bool | None) -> dict[str, str]:
        try:
            raw = _json(api.read_namespaced_secret(name, ns, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise ConfigError(f'secret "{name}" not found' if exc.status == 404 else exc.reason) from exc
        return {k: base64.b64decode(v).decode() for k, v in (raw.get("data") or {}).items()}

    def _config_map(self, api: client.CoreV1Api, ns: str, name: str, optional: bool | None) -> dict[str, str]:
        try:
            return _json(api.read_namespaced_config_map(name, ns, _preload_content=False)).get("data") or {}
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise ConfigError(f'configmap "{name}" not found' if exc.status == 404 else exc.reason) from exc

    def _env(self, api: client.CoreV1Api, pod: dict[str, Any], c: dict[str, Any]) -> dict[str, str]:
        """The container's environment: the image's, the API server's address, envFrom, then env."""
        ns = pod["metadata"]["namespace"]
        env = dict(self.images[c["image"]])
        env.update(HOSTNAME=pod["metadata"]["name"], KUBERNETES_SERVICE_HOST="127.0.0.1",
                   KUBERNETES_SERVICE_PORT=str(self.plane.port), KUBERNETES_SERVICE_PORT_HTTPS=str(self.plane.port))
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                data = self._secret(api, ns, src["secretRef"]["name"], src["secretRef"].get("optional"))
            else:
                data = self._config_map(api, ns, src["configMapRef"]["name"], src["configMapRef"].get("optional"))
            env.update({prefix + k: v for k, v in data.items()})
        for var in c.get("env") or []:
            value = self._env_value(api, pod, c, var, env)
            if value is not None:
                env[var["name"]] = value
        return env

    def _env_value(self, api: client.CoreV1Api, pod: dict[str, Any], c: dict[str, Any], var: dict[str, Any],
                   env: dict[str, str]) -> str | None:
        ns = pod["metadata"]["namespace"]
        if "valueFrom" not in var:
            # $(NAME) expands to an earlier variable; $$(NAME) is a literal $(NAME).
            return re.sub(r"\$(\$)?\(([A-Za-z_][A-Za-z0-9_]*)\)",
                          lambda m: f"$({m[2]})" if m[1] else env.get(m[2], m[0]), var.get("value", ""))
        src = var["valueFrom"]
        if "secretKeyRef" in src or "configMapKeyRef" in src:
            ref = src.get("secretKeyRef") or src["configMapKeyRef"]
            read = self._secret if "secretKeyRef" in src else self._config_map
            data = read(api, ns, ref["name"], ref.get("optional"))
            if ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise ConfigError(f"couldn't find key {ref['key']} in {ref['name']}")
            return data[ref["key"]]
        if "fieldRef" in src:
            return field_value(pod, src["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in src:
            return resource_value(pod, c, src["resourceFieldRef"], self._node_capacity(pod["spec"].get("nodeName")))
        raise ConfigError(f"env {var['name']}: unsupported valueFrom {sorted(src)}")

    def _node_capacity(self, node: str | None) -> dict[str, str]:
        return next((n.capacity for n in self.nodes if n.name == node), {})


def _image_paths(image: dict[str, str], mount_points: list[str]) -> list[str]:
    """Host folders the test image runs from (PATH and PYTHONPATH entries; a virtualenv's bin folder
    stands for the whole virtualenv) that a pod's mount would hide."""
    found: set[str] = set()
    for entry in image.get("PATH", "").split(":") + image.get("PYTHONPATH", "").split(":"):
        path = Path(entry)
        if not entry or not path.is_absolute() or not path.is_dir():
            continue
        if path.name == "bin" and (path.parent / "pyvenv.cfg").is_file():
            path = path.parent
        if any(str(path).startswith(m.rstrip("/") + "/") for m in mount_points):
            found.add(str(path))
    # a folder inside another one already kept comes along with it
    return sorted(p for p in found if not any(p != q and p.startswith(q + "/") for q in found))


def field_value(pod: dict[str, Any], path: str) -> str:
    """The downward API's value of ``path`` (fieldRef.fieldPath)."""
    meta = pod["metadata"]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return (meta.get(match[1]) or {}).get(match[2], "")
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
              "spec.nodeName": pod["spec"].get("nodeName", ""),
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
              "status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1", "status.podIPs": "127.0.0.1",
              "status.hostIPs": "127.0.0.1"}
    if path not in simple:
        raise ConfigError(f"unsupported fieldRef {path}")
    return simple[path]


def resource_value(pod: dict[str, Any], c: dict[str, Any], ref: dict[str, Any], capacity: dict[str, str]) -> str:
    """resourceFieldRef: the container's limit (node allocatable when unset) or request, over the divisor."""
    target = c
    if ref.get("containerName"):
        target = next(x for x in pod["spec"]["containers"] if x["name"] == ref["containerName"])
    kind, _, resource = ref["resource"].partition(".")
    value = ((target.get("resources") or {}).get(kind) or {}).get(resource)
    if value is None:
        value = capacity.get(resource, "0") if kind == "limits" else "0"
    divisor = parse_quantity(str(ref.get("divisor") or "1")) or 1  # the API server defaults it to "0"
    return str(math.ceil(parse_quantity(str(value)) / divisor))
