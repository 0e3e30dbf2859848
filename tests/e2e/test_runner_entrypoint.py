"""The pod entrypoint `python -m assay.runner resolve|ppl|cmp` as a pod runs it: context from the
environment, results in the store, and what the operator learns only through the termination message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from assay import layout
from assay.errors import EXIT_PERMANENT
from assay.spec import RunContext

REPO = Path(__file__).resolve().parents[2]


def run_role(role: str, ctx: RunContext, tmp_path: Path, index: int | None = None) -> tuple[int, str, str]:
    message = tmp_path / f"termination-{role}-{index}"
    env = {**os.environ, **ctx.to_env(), "ASSAY_TERMINATION_LOG": str(message)}
    if index is not None:
        env["JOB_COMPLETION_INDEX"] = str(index)
    proc = subprocess.run([sys.executable, "-m", "assay.runner", role], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    return proc.returncode, message.read_text() if message.exists() else "", proc.stderr


def result(message: str) -> dict:
    """The result a step reported (its termination message is one JSON document: result or failure)."""
    return json.loads(message)["result"]


def failure(message: str) -> dict:
    return json.loads(message)["failure"]


def test_resolve_then_ppl_groups_then_cmp_like_a_cluster_run(test_split, tmp_path):
    """Name-folder URIs are pinned once by resolve; each ppl index predicts its own group of shards."""
    from assay import packages
    from tests.conftest import FIXTURES

    # a store of its own: other tests build more versions of "oracle" into the session's store
    oracle_model = packages.build(packages.load_config(FIXTURES / "oracle" / "model.yaml"), str(tmp_path / "s"),
                                  log=lambda s: None)
    ctx = RunContext(job_name="pods", model_uri=str(Path(oracle_model.uri).parent),
                     dataset_uri=str(Path(test_split.uri).parent), output_uri=str(tmp_path / "out"),
                     worker_count=2, device="cpu")
    code, message, err = run_role("resolve", ctx, tmp_path)
    assert code == 0, err
    inputs = result(message)
    assert inputs["model"] == {"uri": oracle_model.uri, "name": oracle_model.name, "version": oracle_model.version}
    assert inputs["dataset"]["version"] == test_split.version and inputs["shards"] == 3
    assert inputs["samples"] == 17 and inputs["shardsPerIndex"] == 1 and inputs["indexes"] == 3
    assert (tmp_path / "out" / "run.json").is_file(), "resolve claims the output for the run"
    pinned = ctx.model_copy(update={"model_uri": inputs["model"]["uri"], "model_version": oracle_model.version,
                                    "dataset_uri": inputs["dataset"]["uri"], "dataset_version": test_split.version,
                                    "shards_per_index": inputs["shardsPerIndex"]})
    for index in (2, 0, 1):  # the Job controller hands indexes out in any order
        code, message, err = run_role("ppl", pinned, tmp_path, index)
        assert code == 0, err
        assert result(message)["shards"] == 1
        assert Path(layout.results_uri(pinned.output_uri, index)).is_file()
    code, message, err = run_role("cmp", pinned, tmp_path)
    assert code == 0, err
    report = result(message)
    assert report["headline"] == {"name": "bbox/AP", "value": 1.0} and report["summary"]["segm/AP"] == 1.0
    assert len(message) < 4096


def test_resolve_fails_with_a_message_the_operator_can_show(test_split, tmp_path):
    ctx = RunContext(job_name="pods", model_uri=str(tmp_path / "models" / "nothing"), dataset_uri=test_split.uri,
                     output_uri=str(tmp_path / "out"), device="cpu")
    code, message, _ = run_role("resolve", ctx, tmp_path)
    assert code == EXIT_PERMANENT
    assert failure(message)["error"].startswith("no model package at") and failure(message)["hint"]
    assert failure(message)["kind"] == "ObjectNotFound" and failure(message)["retryable"] is False


def test_cmp_summary_is_bounded_for_the_termination_message():
    from assay.metrics import MetricsReport
    from assay.protocol import MAX_REPORT_BYTES, MetricsSummary, result_message

    report = MetricsReport("classification", {f"class-{i:04d}/f1": i / 1000 for i in range(2000)},
                           ("accuracy", 0.5))
    doc = result(result_message(MetricsSummary.bounded(report)))
    assert len(result_message(MetricsSummary.bounded(report))) <= MAX_REPORT_BYTES
    assert doc["truncated"] == 2000 - len(doc["summary"]) and len(doc["summary"]) > 50
    assert doc["headline"] == {"name": "accuracy", "value": 0.5}


PLANTED = "PLANTED-secret-7c0a"


@pytest.mark.parametrize("variable", ["ASSAY_BATCH_SIZE", "ASSAY_WORKERS", "ASSAY_PROGRESS_INTERVAL",
                                      "ASSAY_LEASE_TTL", "ASSAY_STORAGE_RETRIES", "ASSAY_COCO_ENGINE"])
def test_a_bad_setting_is_named_without_its_value(variable, test_split, tmp_path):
    """Issue 18 item 8: a variable filled from a Secret (valueFrom) and invalid for the runner came back,
    value and all, through the termination message into status.message."""
    # an s3:// model: the store's settings are read (and checked) before any request
    ctx = RunContext(job_name="pods", model_uri="s3://bucket/models/nothing", dataset_uri=test_split.uri,
                     output_uri=str(tmp_path / "out"), device="cpu")
    message = tmp_path / "termination"
    env = {**os.environ, **ctx.to_env(), "ASSAY_TERMINATION_LOG": str(message), variable: PLANTED}
    role = "cmp" if variable == "ASSAY_COCO_ENGINE" else "ppl"
    if variable == "ASSAY_COCO_ENGINE":  # reached only when scoring: call the engine choice directly
        code = "from assay.metrics import coco; coco._engine()"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert variable in proc.stderr and PLANTED not in proc.stderr
        return
    proc = subprocess.run([sys.executable, "-m", "assay.runner", role], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    text = message.read_text() if message.exists() else ""
    assert proc.returncode == EXIT_PERMANENT, proc.stderr
    assert variable in failure(text)["error"], text
    assert PLANTED not in text and PLANTED not in proc.stderr


def _handler_model(tmp_path: Path, name: str, module: str, handler: str):
    """The oracle package with one more module whose class is the handler."""
    import shutil

    import yaml

    from assay import packages
    from tests.conftest import FIXTURES

    pkg = tmp_path / name
    shutil.copytree(FIXTURES / "oracle", pkg)
    (pkg / f"{name}.py").write_text(module)
    cfg = yaml.safe_load((pkg / "model.yaml").read_text())
    cfg.update(name=name, code=[*cfg["code"], f"{name}.py"], run={**cfg["run"], "handler": f"{name}:{handler}"})
    (pkg / "model.yaml").write_text(yaml.safe_dump(cfg))
    return packages.build(packages.load_config(pkg / "model.yaml"), str(tmp_path / "store"), log=lambda s: None)


def _resolved(model, test_split, tmp_path: Path) -> RunContext:
    ctx = RunContext(job_name="pods", model_uri=model.uri, dataset_uri=test_split.uri,
                     output_uri=str(tmp_path / "out"), worker_count=1, device="cpu")
    code, message, err = run_role("resolve", ctx, tmp_path)
    assert code == 0, err
    inputs = result(message)
    return ctx.model_copy(update={"model_version": inputs["model"]["version"],
                                  "dataset_version": inputs["dataset"]["version"],
                                  "shards_per_index": inputs["shardsPerIndex"]})


def test_a_ppl_pod_whose_handler_calls_os_exit_0_fails_instead_of_passing(test_split, tmp_path):
    """Issue 19: `os._exit(0)` in predict() ended the pod with code 0, the Job counted the index as done, and
    cmp then failed with "N of N shards have no results" on every rerun."""
    model = _handler_model(tmp_path, "quitter", "import os\n\nfrom handler import OracleHandler\n\n\n"
                           "class Quitter(OracleHandler):\n    def predict(self, batch):\n        os._exit(0)\n",
                           "Quitter")
    code, message, err = run_role("ppl", _resolved(model, test_split, tmp_path), tmp_path, 0)
    assert code == EXIT_PERMANENT, err
    assert failure(message)["error"].startswith("ppl ended with exit code 0 before it finished its work"), message
    assert failure(message)["hint"].startswith("remove that call from the model's handler")
    assert not Path(layout.results_uri(str(tmp_path / "out"), 0)).exists()


def test_a_ppl_pod_ends_what_its_handler_started(test_split, tmp_path, monkeypatch):
    """Issue 19.6 in a pod: a process started in load() outlived the step (on a real node it keeps the
    container's cgroup busy until the kubelet kills it; run by hand it runs on for ever)."""
    from tests.e2e.test_data_safety import _SPAWNER, _running

    model = _handler_model(tmp_path, "spawner", _SPAWNER, "Spawner")
    pids_file = tmp_path / "pids"
    monkeypatch.setenv("ASSAY_TEST_PIDS", str(pids_file))
    code, message, err = run_role("ppl", _resolved(model, test_split, tmp_path), tmp_path, 0)
    assert code == 0, err
    assert result(message)["shards"] == 1
    pids = [int(line) for line in pids_file.read_text().split()]
    try:
        assert len(pids) == 1 and not _running(pids[0]), "the handler's helper outlived the step"
    finally:
        for pid in pids:
            if _running(pid):
                os.kill(pid, 9)



def _as_pid1(role: str, env: dict) -> subprocess.Popen:
    """``python -m assay.runner ROLE`` as PID 1 of a PID namespace of its own, as in a container."""
    return subprocess.Popen(["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child",
                             sys.executable, "-m", "assay.runner", role], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop_pid1(outer: subprocess.Popen, role: str) -> None:
    """SIGTERM to the namespace's PID 1, as the kubelet sends it; it must end with 128 + 15 at once."""
    import signal

    children = Path(f"/proc/{outer.pid}/task/{outer.pid}/children").read_text().split()
    assert len(children) == 1, children
    step = int(children[0])
    nspid = next(line for line in Path(f"/proc/{step}/status").read_text().splitlines() if line.startswith("NSpid:"))
    assert nspid.split()[-1] == "1", f"the step is not PID 1 of its namespace: {nspid}"
    os.kill(step, signal.SIGTERM)
    try:
        code = outer.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{role} as PID 1 ignored SIGTERM for 15 s")
    assert code == 128 + signal.SIGTERM, outer.stderr.read()


@pytest.mark.parametrize("role", ["resolve", "cmp"])
def test_a_pods_main_process_ends_on_the_kubelets_sigterm(role, tmp_path):
    """A container's main process is PID 1 of its PID namespace, and the kernel drops every signal PID 1
    has no handler for: resolve and cmp pods ignored SIGTERM, so each deletion or Kueue preemption waited
    out the grace period (30 s by default) for the SIGKILL. Here the step is stuck on a store that accepts
    connections and never answers, as a pod is on a hung S3: the log upload on the way out is skipped."""
    import socket

    silent = socket.create_server(("127.0.0.1", 0))
    ctx = RunContext(job_name="pods", model_uri="s3://bucket/models/m/0123456789abcdef",
                     dataset_uri="s3://bucket/datasets/d/0123456789abcdef", output_uri="s3://bucket/out",
                     model_version="0123456789abcdef", dataset_version="0123456789abcdef", shards_per_index=1,
                     device="cpu")
    env = {**os.environ, **ctx.to_env(), "ASSAY_TERMINATION_LOG": str(tmp_path / "message"),
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    outer = _as_pid1(role, env)
    try:
        silent.settimeout(120)
        connection, _ = silent.accept()  # the step is at work: it asked the store
        _stop_pid1(outer, role)
        connection.close()
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait()
        silent.close()


def test_a_ppl_pods_main_process_passes_the_kubelets_sigterm_to_its_step(test_split, tmp_path):
    """The ppl pod's PID 1 supervises the step (a child in a group of its own): SIGTERM reaches the step."""
    model = _handler_model(tmp_path, "sleeper", "import os\nimport time\n\nfrom handler import OracleHandler\n\n\n"
                           "class Sleeper(OracleHandler):\n    def load(self, model_dir, device):\n"
                           "        open(os.environ['ASSAY_TEST_LOADING'], 'w').close()\n        time.sleep(300)\n",
                           "Sleeper")
    ctx = _resolved(model, test_split, tmp_path)
    loading = tmp_path / "loading"
    env = {**os.environ, **ctx.to_env(), "ASSAY_TERMINATION_LOG": str(tmp_path / "message"),
           "JOB_COMPLETION_INDEX": "0", "ASSAY_TEST_LOADING": str(loading)}
    outer = _as_pid1("ppl", env)
    try:
        import time

        deadline = time.monotonic() + 120
        while not loading.exists():
            assert outer.poll() is None and time.monotonic() < deadline, outer.stderr.read() if outer.poll() else ""
            time.sleep(0.05)
        _stop_pid1(outer, "ppl")
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait()
