"""A run has one identity, as a user hits it through `assay run`: pinned inputs, one run per output,
results and the model cache verified, processes that end with the run, and a deadline.

Each class docstring names the way a wrong number used to come out."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from assay import layout, packages, protocol, results, verified
from assay.errors import EXIT_PERMANENT, EvaluationError, IntegrityError
from assay.runner import cmp, ppl
from assay.spec import RunContext
from tests.conftest import FIXTURES, job_manifest

REPO = Path(__file__).resolve().parents[2]


def build_model(tmp_path: Path, store: str, name: str = "oracle", empty: bool = False):
    """The oracle package (AP 1.0), or with ``empty`` a different model that finds nothing (AP 0.0)."""
    pkg = tmp_path / f"pkg-{name}-{int(empty)}"
    shutil.copytree(FIXTURES / "oracle", pkg, dirs_exist_ok=True)
    code = ["handler.py"]
    if empty:
        (pkg / "empty.flag").write_text("find nothing\n")
        code.append("empty.flag")
    (pkg / "model.yaml").write_text(yaml.safe_dump({"name": name, "code": code,
                                                    "run": {"handler": "handler:OracleHandler", "evaluator": "coco"}}))
    return packages.build(packages.load_config(pkg / "model.yaml"), store, log=lambda s: None)


def write_job(folder: Path, model_uri: str, dataset_uri: str, output: str = "out", workers: int = 1,
              batch_size: int = 4, **spec) -> Path:
    doc = job_manifest("integrity", model_uri, dataset_uri, output, workers=workers, batch_size=batch_size)
    doc["spec"].update(spec)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def started_items(job_dir: Path) -> int:
    """Work items the workers have started predicting, as their logs say."""
    return sum(log.read_text(errors="replace").count("] work item ") for log in (job_dir / "logs").glob("ppl-*.log"))


def assay(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "assay.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


def start_assay(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "assay.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, cwd=REPO)


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


class TestOneRunPerOutput:
    """Two models run into one output both printed bbox AP 0.644, a number neither earned (1.0 and 0.0)."""

    def test_second_model_into_a_used_output_is_refused_then_overwritten_on_request(
            self, test_split, store, tmp_path):
        good = build_model(tmp_path, store)
        bad = build_model(tmp_path, store, name="empty", empty=True)
        first = assay("run", str(write_job(tmp_path, good.uri, test_split.uri)), "--no-progress")
        assert first.returncode == 0, first.stderr
        before = metrics(tmp_path / "out")
        assert before["summary"]["bbox/AP"] == 1.0 and before["model"]["version"] == good.version

        (tmp_path / "b").mkdir()
        job_b = write_job(tmp_path / "b", bad.uri, test_split.uri, output=str(tmp_path / "out"))
        second = assay("run", str(job_b), "--no-progress")
        assert second.returncode == EXIT_PERMANENT
        assert "belongs to another run" in second.stderr and good.version in second.stderr
        assert bad.version in second.stderr and "--overwrite" in second.stderr
        assert metrics(tmp_path / "out") == before, "the first run's results are untouched"

        third = assay("run", str(job_b), "--no-progress", "--overwrite")
        assert third.returncode == 0, third.stderr
        after = metrics(tmp_path / "out")
        assert after["summary"]["bbox/AP"] == 0.0 and after["model"]["version"] == bad.version
        for i in range(len(test_split.shards)):
            assert results.read_record(str(tmp_path / "out"), i)["model_version"] == bad.version

    def test_concurrent_run_into_the_same_output_fails_at_once_naming_the_holder(
            self, test_split, store, tmp_path):
        model = build_model(tmp_path, store)
        job = write_job(tmp_path, model.uri, test_split.uri)
        slow = start_assay("run", str(job), "--no-progress", env={"ASSAY_TEST_PREDICT_DELAY": "1"})
        try:
            wait_for(lambda: (tmp_path / "out" / "lease.json").is_file(), what="the first run's lease")
            t0 = time.monotonic()
            second = assay("run", str(job), "--no-progress")
            assert time.monotonic() - t0 < 60
            assert second.returncode == EXIT_PERMANENT, second.stderr
            assert "in use by another live run" in second.stderr and f"pid {slow.pid}" in second.stderr
        finally:
            slow.send_signal(signal.SIGINT)
            slow.wait(60)

    def test_cmp_refuses_results_of_another_model(self, test_split, store, tmp_path):
        good = build_model(tmp_path, store)
        bad = build_model(tmp_path, store, name="empty", empty=True)
        out = str(tmp_path / "out")
        ppl.run(RunContext(job_name="a", model_uri=good.uri, dataset_uri=test_split.uri, output_uri=out,
                           device="cpu"))
        foreign = RunContext(job_name="b", model_uri=bad.uri, dataset_uri=test_split.uri, output_uri=out,
                             device="cpu")
        with pytest.raises(Exception, match="belongs to another run"):
            cmp.run(foreign)
        os.remove(os.path.join(out, layout.RUN_RECORD))  # even without the record, the results say whose they are
        with pytest.raises(EvaluationError, match=f"made by another run: model version {good.version} "
                                                  f"\\(this run: {bad.version}\\)"):
            cmp.run(foreign)
        assert not os.path.exists(os.path.join(out, "metrics.json"))


class TestPinnedInputs:
    """A model rebuilt during a run: metrics.json named version 2 for predictions of version 1."""

    def test_model_rebuilt_mid_run_changes_nothing_the_run_evaluates(self, test_split, tmp_path):
        store = str(tmp_path / "store")
        v1 = build_model(tmp_path, store)
        name_folder = str(Path(v1.uri).parent)
        job = write_job(tmp_path, name_folder, test_split.uri, batch_size=1)  # the README's form: a name
        run = start_assay("run", str(job), "--no-progress", env={"ASSAY_TEST_PREDICT_DELAY": "0.3"})
        wait_for(lambda: started_items(tmp_path / "out") >= 1, what="the first work item")
        v2 = build_model(tmp_path, store, empty=True)  # same name, new LATEST
        assert (Path(name_folder) / "LATEST").read_text() == v2.version
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        doc = metrics(tmp_path / "out")
        assert doc["model"]["version"] == v1.version and doc["summary"]["bbox/AP"] == 1.0
        status = json.loads((tmp_path / "out" / "status.json").read_text())
        assert status["model"]["version"] == v1.version

    def test_a_pinned_worker_refuses_another_version(self, test_split, store, tmp_path):
        model = build_model(tmp_path, store)
        ctx = RunContext(job_name="p", model_uri=model.uri, dataset_uri=test_split.uri,
                         output_uri=str(tmp_path / "out"), model_version="0123456789abcdef", device="cpu")
        with pytest.raises(IntegrityError, match=f"is version {model.version}, but this run is pinned"):
            ppl.run(ctx)

    def test_metrics_name_versions_and_run_conditions(self, test_split, store, tmp_path):
        model = build_model(tmp_path, store)
        proc = assay("run", str(write_job(tmp_path, model.uri, test_split.uri, workers=2)), "--no-progress")
        assert proc.returncode == 0, proc.stderr
        doc = metrics(tmp_path / "out")
        assert doc["model"]["version"] == model.version and doc["dataset"]["version"] == test_split.version
        assert doc["settings"]["batchSize"] == 4 and doc["settings"]["workers"] == 2
        (cond,) = doc["runConditions"]
        import torch

        assert cond["torch"] == torch.__version__ and cond["device"] == "cpu" and cond["threads"] >= 1


class TestResultsVerified:
    """192 of 8,010 single-bit flips in a results file were skipped as matching on rerun, and scored."""

    @pytest.mark.parametrize("damaged", ["results", "matches"])
    def test_damaged_results_are_named_by_cmp_and_recomputed_on_rerun(self, test_split, store, tmp_path, damaged):
        """cmp reads the coco match tables, the report and compare the predictions: each names its damage."""
        model = build_model(tmp_path, store)
        job = write_job(tmp_path, model.uri, test_split.uri)
        assert assay("run", str(job), "--no-progress").returncode == 0
        target = Path((layout.results_uri if damaged == "results" else layout.matches_uri)(str(tmp_path / "out"), 1))
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x04  # one bit, mid-file
        target.write_bytes(bytes(data))
        ctx = RunContext(job_name="integrity", model_uri=model.uri, dataset_uri=test_split.uri,
                         output_uri=str(tmp_path / "out"), device="cpu")
        with pytest.raises(IntegrityError, match=f"{target} is damaged"):
            if damaged == "results":
                list(verified.iter_records(test_split, model, str(tmp_path / "out")))
            else:
                cmp.run(ctx)
        rerun = assay("run", str(job), "--no-progress")
        assert rerun.returncode == 0, rerun.stderr
        assert target.read_bytes() != bytes(data), "the damaged shard was recomputed"
        assert metrics(tmp_path / "out")["summary"]["bbox/AP"] == 1.0
        assert "damaged" in (tmp_path / "out" / "logs" / "ppl-0000.log").read_text()

    def test_tampered_model_cache_is_unpacked_again(self, test_split, store, tmp_path, monkeypatch):
        cache = tmp_path / "cache"
        monkeypatch.setenv("ASSAY_CACHE_DIR", str(cache))
        model = build_model(tmp_path, store)
        assert assay("run", str(write_job(tmp_path, model.uri, test_split.uri)), "--no-progress").returncode == 0
        handler = cache / "models" / model.name / model.version / "handler.py"
        handler.write_text(handler.read_text().replace("ids = [] if self.empty else", "ids = [] if True else"))
        (tmp_path / "again").mkdir()
        proc = assay("run", str(write_job(tmp_path / "again", model.uri, test_split.uri)), "--no-progress")
        assert proc.returncode == 0, proc.stderr
        assert metrics(tmp_path / "again" / "out")["summary"]["bbox/AP"] == 1.0
        assert "ids = [] if self.empty else" in handler.read_text(), "the package's own code is back"


class TestProcessLifecycle:
    """Killing `assay run` left its workers running and status.json saying Running forever."""

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
    def test_workers_die_with_the_parent(self, sig, test_split, store, tmp_path):
        model = build_model(tmp_path, store)
        job = write_job(tmp_path, model.uri, test_split.uri, workers=2, batch_size=1)
        run = start_assay("run", str(job), "--no-progress", env={"ASSAY_TEST_PREDICT_DELAY": "2"})
        wait_for(lambda: started_items(tmp_path / "out") == 2, what="two workers")
        workers = descendants(run.pid)
        assert len(workers) >= 2
        run.send_signal(sig)
        _, stderr = run.communicate(timeout=60)
        wait_for(lambda: not (descendants(run.pid) | {p for p in workers if Path(f"/proc/{p}").exists()
                                                      and "Z" not in Path(f"/proc/{p}/stat").read_text()
                                                      .rsplit(")", 1)[1].split()[0]}),
                 timeout=30, what="the workers to end")
        status = json.loads((tmp_path / "out" / "status.json").read_text())
        if sig == signal.SIGKILL:
            assert status["phase"] == "Running"  # nobody could say otherwise; the next start does
            rerun = assay("run", str(job), "--no-progress")
            assert rerun.returncode == 0, rerun.stderr
            status = json.loads((tmp_path / "out" / "status.json").read_text())
            assert status["phase"] == "Succeeded"
            assert status["previousRun"]["reason"] == "Interrupted"
        else:
            assert run.returncode == 128 + sig
            assert status["phase"] == "Failed" and status["reason"] == "Interrupted"
            assert "run `assay run" in stderr and "again to resume" in stderr

    def test_deadline_stops_a_hanging_handler(self, test_split, store, tmp_path, monkeypatch):
        """The run's clock, not a real hour: it reads an hour later once the run has started."""
        from assay.runner.local import run_job
        from assay.spec import load_job

        model = build_model(tmp_path, store)
        job = load_job(write_job(tmp_path, model.uri, test_split.uri, activeDeadlineSeconds=3600))
        readings = []

        def clock() -> float:  # the first reading starts the deadline; every later one is an hour on
            readings.append(time.monotonic())
            return readings[-1] + (3601 if len(readings) > 1 else 0)

        monkeypatch.setenv("ASSAY_TEST_PREDICT_DELAY", "3600")  # the handler hangs in predict()
        monkeypatch.chdir(tmp_path)
        t0 = time.monotonic()
        with pytest.raises(EvaluationError, match="ran past spec.activeDeadlineSeconds=3600") as stopped:
            run_job(job, progress=False, clock=clock)
        assert time.monotonic() - t0 < 60 and len(readings) >= 2
        assert stopped.value.hint and protocol.failure_of(stopped.value).exit_code == EXIT_PERMANENT
        status = json.loads((tmp_path / "out" / "status.json").read_text())
        assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded")

    def test_handler_prints_go_to_the_worker_log_not_stdout(self, test_split, store, tmp_path):
        model = build_model(tmp_path, store)
        proc = assay("run", str(write_job(tmp_path, model.uri, test_split.uri)), "--format", "json",
                     env={"ASSAY_TEST_PRINT": "1"})
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["phase"] == "Succeeded"
        assert "stderr noise" not in proc.stderr
        log = (tmp_path / "out" / "logs" / "ppl-0000.log").read_text()
        assert "predicting" in log and "stderr noise from C-level code" in log

    def test_a_cmp_failure_ends_failed_with_its_message(self, test_split, tmp_path):
        store = str(tmp_path / "store")
        pkg = tmp_path / "pkg"
        shutil.copytree(FIXTURES / "oracle", pkg)
        (pkg / "handler.py").write_text((pkg / "handler.py").read_text().replace(
            'return {"samples": n, "instances": instances}', 'raise ValueError("planted evaluate failure")'))
        (pkg / "model.yaml").write_text("name: h\ncode: [handler.py]\n"
                                        "run: {handler: handler:OracleHandler, evaluator: handler}\n")
        model = packages.build(packages.load_config(pkg / "model.yaml"), store, log=lambda s: None)
        proc = assay("run", str(write_job(tmp_path, model.uri, test_split.uri)), "--no-progress")
        assert proc.returncode == EXIT_PERMANENT
        assert "planted evaluate failure" in proc.stderr and "Traceback" not in proc.stderr
        status = json.loads((tmp_path / "out" / "status.json").read_text())
        assert (status["phase"], status["reason"]) == ("Failed", "MetricsFailed")
        assert "planted evaluate failure" in status["message"]
        assert "planted evaluate failure" in (tmp_path / "out" / "logs" / "cmp.log").read_text()
        assert not (tmp_path / "out" / "metrics.json").exists()


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    """A 741-byte manifest with nested aliases took 1.5 GB and wrote a 205 MB status.json."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = ("apiVersion: assay.dev/v1alpha1\nkind: EvaluationJob\nmetadata: {name: bomb}\nspec:\n"
            "  model: {uri: m}\n  dataset: {uri: d}\n  output: {uri: o}\n  runtime:\n    env:\n"
            "    - name: X\n      value: y\n      valueFrom:\n" + "".join(f"        {line}\n" for line in lines))
    path = tmp_path / "job.yaml"
    path.write_text(bomb)
    assert len(bomb) < 1500
    t0 = time.monotonic()
    proc = assay("run", str(path), timeout=60)
    assert time.monotonic() - t0 < 30
    assert proc.returncode == EXIT_PERMANENT
    assert "aliases expand to more than" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_spec_storage_endpoint_is_honoured_by_assay_run(s3, pennfudan_dir, tmp_path, monkeypatch):
    """assay run ignored spec.storage.endpoint and region, which pods honour."""
    from assay import datasets
    from tests.conftest import write_dataset_yaml

    s3.create_bucket(Bucket="run-endpoint")  # the moto server is shared by the session: a bucket of its own
    store = "s3://run-endpoint/store"
    dataset = datasets.build(datasets.load_config(write_dataset_yaml(tmp_path, pennfudan_dir, volume="64M")),
                             store, log=lambda s: None)
    model = build_model(tmp_path, store)
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    job = write_job(tmp_path, model.uri, dataset.uri, output="s3://run-endpoint/out",
                    storage={"endpoint": endpoint, "region": "us-east-1"})
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
    proc = subprocess.run([sys.executable, "-m", "assay.cli.main", "run", str(job), "--no-progress",
                           "--format", "json"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["phase"] == "Succeeded" and doc["results"]["bbox/AP"] == 1.0
    assert doc["spec"]["storage"]["endpoint"] == endpoint


def test_spec_storage_applies_without_changing_the_environment(s3, pennfudan_dir, tmp_path, monkeypatch, capsys):
    """assay run applied spec.storage by rewriting os.environ (AWS_ENDPOINT_URL, AWS_REGION) for the whole
    process. Now the job's endpoint holds for the run's storage calls and its workers, over the environment's
    (which points nowhere here), and os.environ stays as the user set it, during the run and after."""
    from assay import datasets, runrecord, storage
    from assay.cli.main import main
    from tests.conftest import free_port, write_dataset_yaml

    s3.create_bucket(Bucket="run-no-env")
    store = "s3://run-no-env/store"
    dataset = datasets.build(datasets.load_config(write_dataset_yaml(tmp_path, pennfudan_dir, volume="64M")),
                             store, log=lambda s: None)
    model = build_model(tmp_path, store)
    job = write_job(tmp_path, model.uri, dataset.uri, output="s3://run-no-env/out", workers=2,
                    storage={"endpoint": os.environ["AWS_ENDPOINT_URL"], "region": "us-east-1"})
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ASSAY_STORAGE_DEADLINE", "10")
    monkeypatch.chdir(tmp_path)
    storage.reset_clients()
    before = dict(os.environ)
    during = []
    claim = runrecord.claim

    def watched_claim(*args, **kwargs):
        during.append(dict(os.environ))
        return claim(*args, **kwargs)

    monkeypatch.setattr(runrecord, "claim", watched_claim)
    capsys.readouterr()
    assert main(["run", str(job), "--no-progress", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["phase"] == "Succeeded" and doc["results"]["bbox/AP"] == 1.0, "the workers used the job's endpoint"
    assert during == [before] and dict(os.environ) == before
    assert storage.current_access() is None


class TestMatchingSettings:
    """The settings hash left out COCOeval's parameters, so match tables made under other maxDets, area
    ranges, thresholds or table version would have been merged into one run's metrics."""

    @staticmethod
    def _hash(evaluator: str) -> str:
        from types import SimpleNamespace

        from assay import runrecord

        ctx = RunContext(job_name="j", model_uri="m", dataset_uri="d", output_uri="o")
        model = SimpleNamespace(name="m", version="1", evaluator=evaluator)
        return runrecord.identity(ctx, model, SimpleNamespace(name="d", version="2")).settings_hash

    def test_coco_hash_covers_matching_and_classification_hash_is_unchanged(self, monkeypatch):
        import hashlib

        from assay.metrics import coco_match

        settings = RunContext(job_name="j", model_uri="m", dataset_uri="d", output_uri="o").prediction_settings()
        before = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        assert self._hash("classification") == before, "classification runs keep the hash of their outputs"
        default = self._hash("coco")
        assert default != before
        seen = {default}
        for name, value in (("MAX_DETS", (1, 10, 50)), ("AREA_RANGES", ((0, 1e10),) * 4),
                            ("IOU_THRESHOLDS", coco_match.IOU_THRESHOLDS + 0.01),
                            ("RECALL_THRESHOLDS", coco_match.RECALL_THRESHOLDS[::2]), ("TABLE_VERSION", 99)):
            with monkeypatch.context() as m:
                m.setattr(coco_match, name, value)
                seen.add(self._hash("coco"))
        assert len(seen) == 6, "each matching setting changes the hash"

    def test_results_of_other_matching_settings_are_refused_by_cmp_and_recomputed_by_ppl(
            self, test_split, store, tmp_path, monkeypatch):
        from assay import runrecord
        from assay.errors import SpecError
        from assay.metrics import coco_match

        model = build_model(tmp_path, store)
        ctx = RunContext(job_name="integrity", model_uri=model.uri, dataset_uri=test_split.uri,
                         output_uri=str(tmp_path / "out"), device="cpu")
        ppl.run(ctx)
        assert ppl.results_match(ctx, test_split, model, runrecord.identity(ctx, model, test_split).settings_hash, 0)
        monkeypatch.setattr(coco_match, "MAX_DETS", (1, 10, 50))
        with pytest.raises(SpecError, match=r"setting matching\.maxDets \[1,10,100\] -> \[1,10,50\]"):
            cmp.run(ctx)
        assert not ppl.results_match(ctx, test_split, model,
                                     runrecord.identity(ctx, model, test_split).settings_hash, 0)
