"""The whole local flow: ppl workers, results files, cmp, with the oracle handler (a perfect model)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assay import layout, packages, results, storage, verified
from assay.errors import EvaluationError, HandlerError
from assay.metrics import coco_tables
from assay.runner import cmp, ppl
from assay.runner.local import run_job
from assay.spec import EvaluationJob, RunContext
from tests.conftest import FIXTURES, job_manifest, real_pennfudan

EXPECTED_IDS = sorted([f"FudanPed000{n}6" for n in range(0, 7)] + [f"PennPed000{n}6" for n in range(0, 10)])


def _job(test_split, oracle_model, out, workers=2, batch=4, name="oracle"):
    return EvaluationJob.from_manifest(job_manifest(name, oracle_model.uri, test_split.uri, str(out), workers, batch))


class TestSeedBugs:
    """Each test pins one of the seed example's bugs."""

    def test_ground_truth_as_predictions_scores_one(self, test_split, oracle_model, tmp_path):
        """The seed reported bbox AP 0.26 and segm AP 0.000 for this."""
        run = run_job(_job(test_split, oracle_model, tmp_path / "out"), progress=False)
        assert run.report.summary["bbox/AP"] == 1.0
        assert run.report.summary["segm/AP"] == 1.0
        metrics = json.loads(storage.read_text(layout.metrics_uri(str(tmp_path / "out"))))
        assert metrics["dataset"]["samples"] == 17
        assert (tmp_path / "out" / "status.json").is_file()
        assert json.loads((tmp_path / "out" / "status.json").read_text())["phase"] == "Succeeded"

    def test_every_image_evaluated_once_with_its_own_id(self, test_split, oracle_model, tmp_path):
        """The seed shared one image id across a batch and dropped the last partial batch (17 -> 16)."""
        out = tmp_path / "out"
        run_job(_job(test_split, oracle_model, out, workers=2, batch=4), progress=False)
        ids = []
        for i in range(len(test_split.shards)):
            shard_ids, preds, _ = results.read_local(layout.results_uri(str(out), i))
            ids += shard_ids
        assert sorted(ids) == EXPECTED_IDS
        metrics = json.loads((out / "metrics.json").read_text())
        assert sorted(metrics["full"]["sample_ids"]) == EXPECTED_IDS

    def test_model_loaded_once_in_process(self, test_split, oracle_model, tmp_path):
        ctx = RunContext(job_name="t", model_uri=oracle_model.uri, dataset_uri=test_split.uri,
                         output_uri=str(tmp_path / "out"), worker_index=0, worker_count=1, batch_size=4,
                         device="cpu")
        prior = sys.modules.get("handler")  # another test's package may have left its own 'handler'
        before = getattr(prior, "LOADS", 0)
        if hasattr(prior, "BATCH_SIZES"):
            prior.BATCH_SIZES.clear()
        summary = ppl.run(ctx)
        import handler as oracle  # the package's module, imported by ppl from the unpacked package

        assert oracle.LOADS - (before if oracle is prior else 0) == 1
        assert summary.samples_done == 17 and summary.shards_done == 3
        # 3 shards of 6, 6, 5 samples with batch 4: 4+2, 4+2, 4+1 -> the short tail batches are predicted
        assert sorted(oracle.BATCH_SIZES) == sorted([4, 2, 4, 2, 4, 1])


class TestResume:
    def _ppl_process(self, ctx: RunContext, env_extra: dict) -> subprocess.Popen:
        env = {**os.environ, **ctx.to_env(), "JOB_COMPLETION_INDEX": str(ctx.worker_index), **env_extra}
        return subprocess.Popen([sys.executable, "-m", "assay.runner", "ppl"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def test_killed_worker_rerun_recomputes_only_unfinished_shards(self, test_split, oracle_model, tmp_path):
        out = str(tmp_path / "out")
        ctx = RunContext(job_name="kill", model_uri=oracle_model.uri, dataset_uri=test_split.uri, output_uri=out,
                         worker_index=0, worker_count=1, batch_size=2, device="cpu")
        proc = self._ppl_process(ctx, {"ASSAY_TEST_PREDICT_DELAY": "0.4"})
        first = Path(layout.results_uri(out, 0))
        killed_log = Path(layout.log_uri(out, "ppl", 0))
        deadline = time.monotonic() + 120
        while not (first.exists() and killed_log.exists()) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert first.exists(), proc.communicate()[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = {i for i in range(3) if Path(layout.results_uri(out, i)).exists()}
        assert 0 in done_before and len(done_before) < 3, "the kill must land mid-run"
        mtimes = {i: Path(layout.results_uri(out, i)).stat().st_mtime_ns for i in done_before}
        assert not list(Path(out, "results").glob(".tmp-*")), "no half-written results may remain visible"
        assert killed_log.is_file() and "shard 0: 6 samples written" in killed_log.read_text(), \
            "the log is copied to the store after each shard, so a killed worker's log survives"

        rerun = self._ppl_process(ctx, {})
        log = rerun.communicate(timeout=300)[0]
        assert rerun.returncode == 0, log
        for i in done_before:
            assert f"shard {i}: results exist and match, skipped" in log
            assert Path(layout.results_uri(out, i)).stat().st_mtime_ns == mtimes[i]
        faulted = cmp.run(ctx)

        clean_out = str(tmp_path / "clean")
        clean_ctx = ctx.model_copy(update={"output_uri": clean_out})
        ppl.run(clean_ctx)
        clean = cmp.run(clean_ctx)
        assert faulted.summary == clean.summary
        assert faulted.full == clean.full

    def test_handler_failure_is_permanent_exit_code(self, test_split, oracle_model, tmp_path):
        ctx = RunContext(job_name="fail", model_uri=oracle_model.uri, dataset_uri=test_split.uri,
                         output_uri=str(tmp_path / "out"), worker_index=0, worker_count=1, device="cpu")
        proc = self._ppl_process(ctx, {"ASSAY_TEST_FAIL_ON": "PennPed00016"})
        log = proc.communicate(timeout=300)[0]
        assert proc.returncode == 3, log
        assert "planted failure on PennPed00016" in log


class TestCmpRefusesIncompleteResults:
    @pytest.fixture
    def finished(self, test_split, oracle_model, tmp_path):
        ctx = RunContext(job_name="c", model_uri=oracle_model.uri, dataset_uri=test_split.uri,
                         output_uri=str(tmp_path / "out"), device="cpu")
        ppl.run(ctx)
        return ctx

    def test_missing_shard(self, finished):
        os.remove(layout.results_uri(finished.output_uri, 1))
        with pytest.raises(EvaluationError, match="1 of 3 shards have no results"):
            cmp.run(finished)

    def test_duplicated_and_missing_sample(self, finished, test_split):
        """A worker that wrote a consistent results file with a wrong id set (checksums cannot catch it):
        the readers of predictions (report, compare, check) refuse it."""
        uri = layout.results_uri(finished.output_uri, 0)
        ids, preds, meta = results.read_local(uri)
        ids[1] = ids[0]  # one sample twice, another missing
        meta = {k: v for k, v in meta.items() if k not in ("fields", "samples")}
        local = Path(finished.output_uri) / "rewritten.parquet"
        results.write_local(local, ids, preds, meta)
        record = results.read_record(finished.output_uri, 0)
        results.publish(local, finished.output_uri, 0, {k: v for k, v in record.items()
                                                       if k not in ("sha256", "bytes")})
        model = packages.load_manifest(finished.model_uri)
        with pytest.raises(EvaluationError, match="1 missing .* 1 duplicated"):
            list(verified.iter_records(test_split, model, finished.output_uri))

    @pytest.mark.parametrize("wrong", ["duplicated", "reordered"])
    def test_match_tables_with_wrong_ids(self, finished, wrong):
        """The same for the coco match tables cmp merges: a wrong id set, or the right one in another order."""
        uri = layout.matches_uri(finished.output_uri, 0)
        matches, meta = coco_tables.read(uri)
        ids = list(matches.sample_ids)
        if wrong == "duplicated":
            ids[1] = ids[0]
        else:
            ids[0], ids[1] = ids[1], ids[0]
        local = Path(finished.output_uri) / "rewritten.matches.parquet"
        coco_tables.write(local, dataclasses.replace(matches, sample_ids=ids), meta)
        record = results.read_record(finished.output_uri, 0)
        results.publish(layout.results_uri(finished.output_uri, 0), finished.output_uri, 0,
                        {k: v for k, v in record.items() if k not in ("sha256", "bytes", "matches")},
                        (local, {"version": record["matches"]["version"]}))
        with pytest.raises(EvaluationError, match="1 missing .* 1 duplicated" if wrong == "duplicated" else
                           "another order"):
            cmp.run(finished)

    def test_missing_match_tables(self, finished):
        os.remove(layout.matches_uri(finished.output_uri, 2))
        with pytest.raises(EvaluationError, match="1 of 3 shards have no results"):
            cmp.run(finished)

    def test_wrong_prediction_count_from_handler(self):
        with pytest.raises(HandlerError):
            results.write_local("/nonexistent/x.parquet", ["a", "b"], [{}], {})


def test_cli_run_prints_metrics(test_split, oracle_model, tmp_path):
    import yaml

    manifest = job_manifest("cli", oracle_model.uri, test_split.uri, "out", workers=1)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(manifest))
    proc = subprocess.run([sys.executable, "-m", "assay.cli.main", "run", str(tmp_path / "job.yaml"),
                           "--no-progress"], capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "segm/AP" in proc.stdout and "1.0000" in proc.stdout
    assert (tmp_path / "out" / "metrics.json").is_file(), "relative output URIs resolve against the manifest"


def test_oracle_fixture_is_a_real_package(oracle_model):
    assert oracle_model.handler == "handler:OracleHandler"
    assert (FIXTURES / "oracle" / "handler.py").is_file()


def test_handler_evaluator(test_split, tmp_path):
    """run.evaluator: handler hands (id, label, prediction) records to the handler's evaluate()."""
    import shutil

    from assay import packages

    shutil.copytree(FIXTURES / "oracle", tmp_path / "pkg")
    (tmp_path / "pkg" / "model.yaml").write_text(
        "name: oracle-eval\ncode: ['handler.py']\nrun: {handler: handler:OracleHandler, evaluator: handler}\n")
    model = packages.build(packages.load_config(tmp_path / "pkg" / "model.yaml"), str(tmp_path / "s"),
                           log=lambda s: None)
    ctx = RunContext(job_name="h", model_uri=model.uri, dataset_uri=test_split.uri,
                     output_uri=str(tmp_path / "out"), device="cpu")
    ppl.run(ctx)
    report = cmp.run(ctx)
    assert report.evaluator == "handler"
    from assay import shards

    objects = sum(len(r["label"]["objects"]) for i in range(len(test_split.shards))
                  for r in shards.read_labels(test_split, i))
    assert objects == 47 or not real_pennfudan()  # the real split's pedestrians; the stand-in has its own
    assert report.summary == {"samples": 17.0, "instances": float(objects)}
