"""`assay job` commands against the emulated API server (no operator: the test writes the status)."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner
from conftest import GROUP, NS, PLURAL, VERSION

from assay.cli.job import job

DONE = {"phase": "Succeeded", "reason": "Succeeded", "shards": {"summary": "4/4"},
        "progress": {"percent": 100.0, "percentText": "100.0%"}, "resultsUri": "/o/metrics.json",
        "results": {"headline": "0.812", "headlineMetric": "bbox/AP", "summary": {"bbox/AP": 0.8123}}}


def set_status(cluster, st, name="eval"):
    cluster.custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, name, {"status": st},
                                                        _content_type="application/merge-patch+json")


def test_submit_list_results_watch_cancel(cluster, tmp_path):
    manifest = cluster.manifest()
    del manifest["metadata"]["uid"], manifest["metadata"]["resourceVersion"], manifest["metadata"]["generation"]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    cli = CliRunner()

    out = cli.invoke(job, ["submit", str(path), "--detach"])
    assert out.exit_code == 0, out.output
    assert "submitted evaluationjob evals/eval" in out.output and "assay job watch eval" in out.output
    assert cluster.evaljob()["spec"]["ppl"]["workers"] == 2

    again = cli.invoke(job, ["submit", str(path), "--detach"])
    assert again.exit_code != 0 and "already exists" in str(again.exception)

    set_status(cluster, DONE)
    listed = cli.invoke(job, ["list"])
    assert listed.exit_code == 0 and "eval" in listed.output and "Succeeded" in listed.output
    assert "4/4" in listed.output and "0.812" in listed.output

    res = cli.invoke(job, ["results", "eval", "--format", "json"])
    assert json.loads(res.output)["results"]["summary"] == {"bbox/AP": 0.8123}

    watched = cli.invoke(job, ["watch", "eval"])
    assert watched.exit_code == 0 and "bbox/AP = 0.812" in watched.output

    set_status(cluster, {"phase": "Failed", "reason": "ImagePullBackOff", "message": "pod x: ImagePullBackOff"})
    failed = cli.invoke(job, ["watch", "eval"])
    assert failed.exit_code == 1 and "ImagePullBackOff" in failed.output

    assert cli.invoke(job, ["cancel", "eval"]).exit_code == 0
    assert cluster.evaljob() is None
    missing = cli.invoke(job, ["results", "eval"])
    assert missing.exit_code != 0 and "not found" in str(missing.exception)
