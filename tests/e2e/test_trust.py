"""Results that readers can trust: what reaches the terminal is inert, secrets stay hidden with
ASSAY_DEBUG=1, metrics.json edited after the run is refused, and the job folder keeps no env values."""

from __future__ import annotations

import pytest

from assay.cli.main import main
from assay.errors import AssayError

EVIL = "x\x1b]0;pwned\x07\x1b[2Jy"


def _doc(evil: str) -> dict:
    side = {"model": {"name": evil, "version": "1"}, "dataset": {"name": "d", "version": "2"}, "ref": evil}
    return {"a": side, "b": side, "evaluator": "coco", "sameDataset": True,
            "metrics": [{"name": evil, "a": 1.0, "b": 0.5, "delta": -0.5, "change": "worse"}],
            "perSampleScore": "bbox", "samples": {"compared": 1, "regressed": 1, "improved": 0, "unchanged": 0,
                                                  "onlyInA": 0, "onlyInB": 0},
            "regressions": [{"id": evil, "a": 1.0, "b": 0.5, "drop": 0.5}]}


def test_compare_escapes_control_characters_in_ids(monkeypatch, capsys):
    import assay.report.compare as compare_mod

    monkeypatch.setattr(compare_mod, "compare_runs", lambda *a: _doc(EVIL))
    assert main(["compare", "a", "b"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "x\\x1b]0;pwned\\x07\\x1b[2Jy" in out
    assert "regressed" in out and out.count("\n") > 5  # line breaks of the layout stay
    # JSON escapes them itself
    assert main(["compare", "a", "b", "--format", "json"]) == 0
    assert "\x1b" not in capsys.readouterr().out


def test_error_messages_escape_control_characters(monkeypatch, capsys):
    import assay.report.compare as compare_mod

    def boom(*a):
        raise AssayError(f"no sample {EVIL}", hint="check it")

    monkeypatch.setattr(compare_mod, "compare_runs", boom)
    assert main(["compare", "a", "b"]) == 3
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "pwned" in err


@pytest.mark.parametrize("debug", ["1", "0"])
def test_debug_traceback_hides_credentials(monkeypatch, capsys, debug):
    import assay.report.compare as compare_mod

    monkeypatch.setenv("ASSAY_DEBUG", debug)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "PLANTED-aws-9f3e")

    def boom(*a):
        local = "http://user:hunter2@127.0.0.1:9/bucket"  # noqa: F841 - a local a traceback could show
        raise RuntimeError("cannot reach http://user:hunter2@127.0.0.1:9/bucket with key PLANTED-aws-9f3e")

    monkeypatch.setattr(compare_mod, "compare_runs", boom)
    assert main(["compare", "a", "b"]) == 1
    err = capsys.readouterr().err
    assert ("Traceback" in err) == (debug == "1")
    assert "hunter2" not in err and "PLANTED-aws-9f3e" not in err
    assert "http://***@127.0.0.1:9/bucket" in err and "error: unexpected RuntimeError" in err


def test_local_status_names_env_variables_without_their_values(tmp_path):
    import json

    from assay.runner.status_file import StatusFile
    from assay.spec import EvaluationJob
    from tests.conftest import job_manifest

    manifest = job_manifest("envjob", str(tmp_path / "m"), str(tmp_path / "d"), str(tmp_path / "out"))
    manifest["spec"]["runtime"] = {"env": [{"name": "API_TOKEN", "value": "PLANTED-env-77aa"},
                                           {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {
                                               "name": "s", "key": "k"}}}]}
    status = StatusFile(EvaluationJob.from_manifest(manifest), tmp_path)
    status.update(phase="Running")
    text = (tmp_path / "status.json").read_text()
    assert "PLANTED-env-77aa" not in text
    assert json.loads(text)["spec"]["runtime"]["env"] == [{"name": "API_TOKEN"}, {"name": "FROM_SECRET"}]


def test_two_jobs_of_one_name_writing_two_s3_outputs_keep_apart(s3, test_split, oracle_model, tmp_path,
                                                                 monkeypatch):
    """Before: both used ./.assay/jobs/NAME; the second run appended to the first one's logs and overwrote its
    status.json, so the first output's local record was lost."""
    import json

    from assay.layout import local_job_dir
    from assay.runner.local import run_job
    from assay.spec import EvaluationJob
    from tests.conftest import job_manifest

    s3.create_bucket(Bucket="twins")
    monkeypatch.chdir(tmp_path)
    folders = []
    for output in ("s3://twins/a", "s3://twins/b"):
        job = EvaluationJob.from_manifest(job_manifest("twin", oracle_model.uri, test_split.uri, output))
        assert run_job(job, progress=False).status["phase"] == "Succeeded"
        folders.append(tmp_path / local_job_dir(job.name, output))
    assert folders[0] != folders[1] and all(f.parent == tmp_path / ".assay" / "jobs" for f in folders)
    for folder, output in zip(folders, ("s3://twins/a", "s3://twins/b"), strict=True):
        assert json.loads((folder / "status.json").read_text())["spec"]["output"]["uri"] == output
        written = [line for line in (folder / "logs" / "cmp.log").read_text().splitlines() if "metrics written" in line]
        assert len(written) == 1 and written[0].endswith(f"{output}/metrics.json"), written
    assert local_job_dir("twin", "s3://twins/b").name == "twin-" + __import__("hashlib").sha256(b"s3://twins/b").hexdigest()[:8]
