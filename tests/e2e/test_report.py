"""`assay report` and `assay compare` on real runs: PennFudanPed with a perfect and an imperfect model,
and digits (classification) with class names and ids that are HTML.

The imperfect coco model is the oracle with miss.flag: it misses the last instance of images with more
than one instance whose id's crc32 is divisible by 3, and is perfect elsewhere. So the per-sample score
(bbox AP@0.5 of the image alone) of exactly those images drops, from 1 to the share of COCO's 101 recall
points at or below (n - 1) / n.

Set ASSAY_REPORT_SCREENSHOTS=docs/images to keep the headless-Chromium screenshots (the README's).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from assay import datasets, layout, packages, results, shards
from assay.cli.main import main
from assay.metrics import coco_tables
from assay.report.finished import open_run
from assay.runner.local import run_job
from assay.spec import load_job, with_local_uris_relative_to
from tests.conftest import FIXTURES, job_manifest, write_dataset_yaml

REPO = Path(__file__).resolve().parents[2]
EVIL_CLASS = "<script>alert('class')</script>"
EVIL_PREFIX = "<i>x</i>"
WINDOW = (1280, 3200)


def _model(tmp: Path, store: str, source: Path, flag: str | None = None):
    pkg = tmp / f"pkg-{source.name}-{flag}"
    shutil.copytree(source, pkg)
    cfg = yaml.safe_load((pkg / "model.yaml").read_text())
    if flag:
        (pkg / flag).write_text("on\n")
        cfg["code"] = [*cfg["code"], flag]
        cfg["name"] = f"{cfg['name']}-{flag.split('.')[0]}"
    (pkg / "model.yaml").write_text(yaml.safe_dump(cfg))
    return packages.build(packages.load_config(pkg / "model.yaml"), store, log=lambda s: None)


def _run(folder: Path, model_uri: str, dataset_uri: str) -> str:
    """Run a job whose manifest lives in ``folder`` (output ``folder/out``); the manifest's path."""
    folder.mkdir(parents=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job_manifest(folder.name, model_uri, dataset_uri, "out", workers=1)))
    run_job(with_local_uris_relative_to(load_job(path), folder), progress=False)
    return str(path)


@pytest.fixture(scope="module")
def coco(test_split, oracle_model, pennfudan_dir, tmp_path_factory):
    """Jobs of the perfect (a) and the imperfect (b) model on the test split, and the perfect model on
    the same images rebuilt in smaller shards (another dataset version)."""
    tmp = tmp_path_factory.mktemp("coco-runs")
    own = str(tmp / "store")  # not the session's store: another pennfudan version there would become its latest
    missing = _model(tmp, own, FIXTURES / "oracle", "miss.flag")
    rebuilt = datasets.build(datasets.load_config(write_dataset_yaml(tmp, pennfudan_dir, volume="1M")), own,
                             log=lambda s: None)
    assert rebuilt.version != test_split.version and rebuilt.samples == test_split.samples
    return {"a": _run(tmp / "perfect", oracle_model.uri, test_split.uri),
            "b": _run(tmp / "miss", missing.uri, test_split.uri),
            "rebuilt": _run(tmp / "rebuilt", oracle_model.uri, rebuilt.uri),
            "dataset": test_split, "rebuilt_version": rebuilt.version}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits run: class 0 is named like a script, and every id starts with markup."""
    tmp = tmp_path_factory.mktemp("digits-run")
    sys.path.insert(0, str(FIXTURES / "digits"))
    from digits_source import write_digits

    write_digits(tmp / "data", count=120)
    shutil.copy(FIXTURES / "digits" / "digits_source.py", tmp / "digits_source.py")
    (tmp / "evil_source.py").write_text(
        "from assay.shards import Sample\nfrom digits_source import DigitsSource\n\n\n"
        "class EvilDigits(DigitsSource):\n"
        f"    label_schema = {{'task': 'classification', 'classes': [{EVIL_CLASS!r}] + [str(d) for d in range(1, 10)]}}\n\n"
        "    def __iter__(self):\n"
        "        for s in super().__iter__():\n"
        f"            yield Sample(id={EVIL_PREFIX!r} + s.id, files=s.files, label=s.label)\n")
    (tmp / "dataset.yaml").write_text(f"name: digits\ndata_dir: {tmp / 'data'}\ndata_filter: '*.png'\n"
                                      "label_filter: labels.json\nprocess: evil_source:EvilDigits\n"
                                      "attr: {volume_size: 64K}\n")
    store = str(tmp / "store")
    ds = datasets.build(datasets.load_config(tmp / "dataset.yaml"), store, log=lambda s: None)
    model = _model(tmp, store, FIXTURES / "digits")
    return {"job": _run(tmp / "noisy", model.uri, ds.uri), "dataset": ds}


# ------------------------------------------------------------------------------------------------ helpers


class _Page(HTMLParser):
    """Section ids, images (src, alt) and figure captions of a report."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.captions, self._caption = [], [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a["id"])
        elif tag == "img":
            self.images.append((a["src"], a.get("alt")))
        elif tag == "figcaption":
            self._caption = ""

    def handle_data(self, data):
        if self._caption is not None:
            self._caption += data

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self.captions.append(self._caption)
            self._caption = None


def _report(job: str, out: Path, *args: str) -> tuple[str, _Page]:
    assert main(["report", job, "-o", str(out), *args]) == 0
    text = out.read_text()
    return text, _Page(text)


def _decoded(src: str):
    from PIL import Image

    head, _, data = src.partition(",")
    assert re.fullmatch(r"data:image/(png|jpeg);base64", head), head[:60]
    img = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    img.load()
    assert img.format.lower() in head and img.width > 16 and img.height > 16
    return img


def _self_contained(text: str) -> None:
    assert not re.search(r"https?:", text, re.I), "no network reference"
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text


def _per_image_ap50(n_objects: int, found: int) -> float:
    """COCO's interpolated AP of an image where ``found`` of ``n_objects`` are found, with no false positive."""
    return float((np.linspace(0, 1, 101) <= found / n_objects + 1e-12).sum() / 101)


def _expected_drops(dataset) -> dict[str, float]:
    """The samples the miss.flag model gets worse, with the drop of their per-sample score."""
    out = {}
    for i in range(len(dataset.shards)):
        for r in shards.read_labels(dataset, i):
            n = len(r["label"]["objects"])
            if n > 1 and zlib.crc32(r["id"].encode()) % 3 == 0:
                out[r["id"]] = 1.0 - _per_image_ap50(n, n - 1)
    return out


# ------------------------------------------------------------------------------------------------- report


def test_coco_report_sections_images_and_worst_gallery(coco, tmp_path):
    text, page = _report(coco["b"], tmp_path / "r.html")
    assert page.sections == ["overview", "metrics", "per-category", "pr-curves", "worst"]
    _self_contained(text)
    for src, _ in page.images:
        _decoded(src)
    # two PR figures (bbox, segm), each with IoU 0.50, 0.75 and 0.50:0.95 panels, then the gallery
    plots = [alt for _, alt in page.images if alt.endswith("precision-recall curves")]
    assert plots == ["bbox precision-recall curves", "segm precision-recall curves"]
    assert _decoded(page.images[0][0]).width >= 3 * 360
    metrics = json.loads((Path(coco["b"]).parent / "out" / "metrics.json").read_text())
    assert set(metrics["full"]["bbox/precision_curves"]) == {"0.50", "0.75", "0.50:0.95"}
    assert f"{metrics['summary']['bbox/AP']:.4f}" in text and metrics["model"]["version"] in text
    # the worst first: exactly the images the model got worse, lowest score first, then perfect ones by id
    drops = _expected_drops(coco["dataset"])
    worst = [c.split(":")[0] for c in page.captions]
    assert len(worst) == 12
    assert worst[:len(drops)] == sorted(drops, key=lambda i: (-drops[i], i))
    assert all(f"score {1 - drops[i]:.3f}" in c for i, c in zip(worst, page.captions, strict=False) if i in drops)
    assert all("score 1.000" in c for c in page.captions[len(drops):])
    assert text.count('class="gallery"') == 1 and text.count("<figure>") == 12



def test_default_file_is_named_after_the_job(coco, tmp_path, monkeypatch, capsys):
    """Two jobs whose manifests are both job.yaml get two files: report-<metadata.name>.html."""
    monkeypatch.chdir(tmp_path)
    for ref in (coco["a"], coco["b"], str(Path(coco["b"]).parent / "out")):
        assert main(["report", ref, "--gallery", "0"]) == 0
    assert sorted(p.name for p in tmp_path.glob("report-*.html")) == [
        "report-miss.html", "report-out.html", "report-perfect.html"]
    assert not list(tmp_path.glob(".tmp-*")), "written through a temp file, renamed when whole"

def test_classification_report_escapes_user_strings(digits, tmp_path):
    text, page = _report(digits["job"], tmp_path / "r.html", "--gallery", "5")
    assert page.sections == ["overview", "metrics", "per-class", "confusion", "roc", "misclassified"]
    _self_contained(text)
    assert EVIL_CLASS not in text and "&lt;script&gt;alert(&#x27;class&#x27;)&lt;/script&gt;" in text
    assert "<i>" not in text and "&lt;i&gt;x&lt;/i&gt;digit-" in text
    for src, _ in page.images:
        _decoded(src)
    assert [alt for _, alt in page.images[:2]] == ["confusion matrix", "ROC curves"]
    wrong = _fixture_module(FIXTURES / "digits" / "handler.py").wrong
    ids = [f"{EVIL_PREFIX}digit-{i:04d}" for i in range(120)]
    misclassified = sorted(i for i in ids if wrong(i))
    assert f"{len(misclassified)} of 120 samples misclassified" in text
    assert [c.split(": true")[0] for c in page.captions] == misclassified[:5]
    assert page.captions[0].endswith(f"true {_class(digits, misclassified[0], 0)}, predicted "
                                     f"{_class(digits, misclassified[0], 1)}")


def _fixture_module(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"fixture_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _class(digits, sample_id: str, shift: int) -> str:
    ds = digits["dataset"]
    label = next(r["label"]["label"] for i in range(len(ds.shards)) for r in shards.read_labels(ds, i)
                 if r["id"] == sample_id)
    return ds.label_schema["classes"][(label + shift) % 10]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is needed: run scripts/install-chromium.sh (make test does)"
    return found


def _render(html_path: Path, png: Path) -> str:
    """Screenshot ``html_path`` in headless Chromium (network off) and return the DOM it rendered."""
    # a profile of its own: a Chromium already running with the default one would take the page over
    args = [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={png.parent / 'chromium-profile'}", "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>", f"--window-size={WINDOW[0]},{WINDOW[1]}"]
    url = html_path.resolve().as_uri()
    shot = subprocess.run([*args, f"--screenshot={png}", url], capture_output=True, text=True, timeout=180)
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-3000:]
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-3000:]
    return dom.stdout


@pytest.mark.parametrize("kind", ["coco", "classification"])
def test_report_renders_in_headless_chromium(kind, coco, digits, tmp_path):
    from PIL import Image

    job = coco["b"] if kind == "coco" else digits["job"]
    html_path = tmp_path / "report.html"
    _report(job, html_path)
    png = tmp_path / "report.png"
    dom = _render(html_path, png)
    expected = _Page(html_path.read_text()).sections
    assert _Page(dom).sections == expected, "every section is in the rendered DOM"
    with Image.open(png) as shot:
        assert shot.size == WINDOW
        pixels = np.asarray(shot.convert("RGB"))
    # a real page: mostly white background, yet dark text and many colours (plots, photographs)
    assert (pixels > 240).all(axis=2).mean() > 0.3
    assert (pixels < 80).all(axis=2).sum() > 2000
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    if kind == "classification":
        assert "&lt;script&gt;" in dom and "<script" not in dom.lower(), "the class name stays text"
    keep = os.environ.get("ASSAY_REPORT_SCREENSHOTS")
    if keep:  # 256 colours: a third of the bytes in the repository, and the page still reads the same
        Path(keep).mkdir(parents=True, exist_ok=True)
        with Image.open(png) as shot:
            shot.convert("RGB").quantize(256).save(Path(keep) / f"report-{kind}.png", optimize=True)


def test_report_refuses_unfinished_and_damaged_runs(coco, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(Path(coco["b"]).parent / "out", out)
    status = json.loads((out / "status.json").read_text())
    (out / "status.json").write_text(json.dumps({**status, "phase": "Running"}))
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 3
    assert "has not finished: its run is in phase Running" in capsys.readouterr().err
    (out / "status.json").write_text(json.dumps({**status, "phase": "Failed", "reason": "DeadlineExceeded"}))
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 3
    err = capsys.readouterr().err
    assert "its run failed (DeadlineExceeded): there is no finished run to read" in err and "run the job again" in err
    (out / "status.json").write_text(json.dumps(status))
    (out / "metrics.json").rename(out / "metrics.moved")
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 3
    err = capsys.readouterr().err
    assert "has not finished: no metrics.json" in err and "hint:" in err
    (out / "metrics.moved").rename(out / "metrics.json")
    shard = out / "results" / "shard-000001.parquet"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 3
    assert "is damaged" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
    assert main(["report", str(tmp_path / "nowhere"), "-o", str(tmp_path / "r.html")]) == 3
    assert "no such job manifest or output folder" in capsys.readouterr().err


# ------------------------------------------------------------------------ per-sample scores, from the tables


def _output_copy(job: str, dest: Path) -> Path:
    shutil.copytree(Path(job).parent / "out", dest)
    return dest


def _republish_matches(out: Path, index: int, change) -> None:
    """Rewrite shard ``index``'s match tables as ``change(matches)`` says, with a record that vouches for them."""
    matches, meta = coco_tables.read(layout.matches_uri(str(out), index))
    local = out.parent / f"{out.name}-{index}.matches.parquet"
    coco_tables.write(local, change(matches), {k: v for k, v in meta.items() if k in ("shard", "shard_sha256",
                                                                                       "settings_hash")})
    record = results.read_record(str(out), index)
    results.publish(layout.results_uri(str(out), index), str(out), index,
                    {k: v for k, v in record.items() if k not in ("sha256", "bytes", "matches")},
                    (local, {"version": record["matches"]["version"]}))


def test_per_sample_scores_from_the_tables_equal_those_from_the_predictions(coco):
    for key in ("a", "b"):
        with open_run(coco[key]) as run:
            assert run.per_sample() == run.evaluate().per_sample()


def test_report_and_compare_take_per_sample_scores_from_the_match_tables(coco, tmp_path, capsys):
    """A table saying the first image's detections matched nothing: both show its score as 0, which the
    predictions (all correct there) could not give."""
    out = _output_copy(coco["b"], tmp_path / "unmatched")
    first = shards.read_labels(coco["dataset"], 0)[0]["id"]

    def unmatch_first_image(m):
        t = m.tables["bbox"]
        owner = np.repeat(t.image, t.num_dets)
        matched = np.where(owner == m.image_offset, np.uint64(0), t.matched)
        return dataclasses.replace(m, tables={**m.tables, "bbox": dataclasses.replace(t, matched=matched)})

    _republish_matches(out, 0, unmatch_first_image)
    code, text, _ = _compare(capsys, coco["a"], str(out), "--format", "json")
    assert code == 0
    regressions = {r["id"]: r for r in json.loads(text)["regressions"]}
    assert first not in _expected_drops(coco["dataset"]) and regressions[first]["b"] == 0.0
    _, page = _report(str(out), tmp_path / "r.html")
    assert page.captions[0].startswith(f"{first}: score 0.000")


def test_damaged_or_missing_match_tables_stop_report_and_compare(coco, tmp_path, capsys):
    out = _output_copy(coco["b"], tmp_path / "damaged")
    tables = Path(layout.matches_uri(str(out), 1))
    data = bytearray(tables.read_bytes())
    data[len(data) // 2] ^= 0x10
    tables.write_bytes(bytes(data))
    assert _compare(capsys, coco["a"], str(out))[0] == 3
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 3
    assert f"{tables} is damaged" in capsys.readouterr().err
    tables.unlink()
    code, _, err = _compare(capsys, coco["a"], str(out))
    assert code == 3 and "1 of 3 shards have no results" in err


def test_a_run_from_before_match_tables_is_scored_from_its_predictions(coco, tmp_path, capsys):
    out = _output_copy(coco["b"], tmp_path / "old")
    for index in range(len(coco["dataset"].shards)):
        Path(layout.matches_uri(str(out), index)).unlink()
        record_path = Path(layout.results_record_uri(str(out), index))
        record_path.write_text(json.dumps({k: v for k, v in json.loads(record_path.read_text()).items()
                                           if k != "matches"}))
    new, old = (json.loads(_compare(capsys, coco["a"], b, "--format", "json")[1]) for b in (coco["b"], str(out)))
    assert old["regressions"] and (old["samples"], old["regressions"]) == (new["samples"], new["regressions"])
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 0


# ------------------------------------------------------------------------------------------------ compare


def _compare(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["compare", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compare_metric_deltas_and_regressions(coco, capsys):
    code, out, _ = _compare(capsys, coco["a"], coco["b"], "--format", "json", "--top", "3")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"a", "b", "evaluator", "sameDataset", "metrics", "perSampleScore", "samples",
                        "regressions"}
    assert doc["evaluator"] == "coco" and doc["sameDataset"] is True
    assert doc["a"]["model"]["name"] == "oracle" and doc["b"]["model"]["name"] == "oracle-miss"
    assert doc["a"]["dataset"]["version"] == doc["b"]["dataset"]["version"] == coco["dataset"].version
    ma = json.loads((Path(coco["a"]).parent / "out" / "metrics.json").read_text())["summary"]
    mb = json.loads((Path(coco["b"]).parent / "out" / "metrics.json").read_text())["summary"]
    assert [m["name"] for m in doc["metrics"]] == list(ma)
    for m in doc["metrics"]:
        assert (m["a"], m["b"]) == (ma[m["name"]], mb[m["name"]])
        assert m["delta"] == pytest.approx(mb[m["name"]] - ma[m["name"]])
        assert m["change"] == ("worse" if mb[m["name"]] < ma[m["name"]] else "same")
    assert {m["name"]: m["change"] for m in doc["metrics"]}["bbox/AP"] == "worse"
    drops = _expected_drops(coco["dataset"])
    assert len(drops) >= 3, "the fixture must make several regressions"
    assert doc["samples"] == {"compared": 17, "regressed": len(drops), "improved": 0,
                              "unchanged": 17 - len(drops), "onlyInA": 0, "onlyInB": 0}
    expected = sorted(drops, key=lambda i: (-drops[i], i))[:3]
    assert [r["id"] for r in doc["regressions"]] == expected
    for r in doc["regressions"]:
        assert r["a"] == 1.0 and r["drop"] == pytest.approx(drops[r["id"]]) and r["b"] == pytest.approx(1 - r["drop"])
    # the other way round nothing regresses, and the table names the improvements
    code, out, _ = _compare(capsys, coco["b"], coco["a"])
    assert code == 0 and f"0 of 17 samples regressed, {len(drops)} improved" in out
    assert re.search(r"bbox/AP +\d\.\d{4} +1\.0000 +\+\d\.\d{4} +better", out), out


def test_compare_refuses_different_dataset_versions_unless_asked(coco, capsys):
    code, _, err = _compare(capsys, coco["a"], coco["rebuilt"])
    assert code == 3
    assert f"pennfudan@{coco['dataset'].version}" in err and f"pennfudan@{coco['rebuilt_version']}" in err
    assert "--allow-different-datasets" in err and "hint:" in err
    code, out, _ = _compare(capsys, coco["a"], coco["rebuilt"], "--allow-different-datasets", "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["sameDataset"] is False and doc["b"]["dataset"]["version"] == coco["rebuilt_version"]
    assert doc["samples"]["compared"] == 17 and doc["samples"]["regressed"] == 0 and doc["regressions"] == []
    assert all(m["change"] == "same" for m in doc["metrics"])


def test_compare_refuses_other_evaluators_and_unfinished_runs(coco, digits, tmp_path, capsys):
    code, _, err = _compare(capsys, coco["a"], digits["job"])
    assert code == 3 and "coco evaluator" in err and "classification" in err
    out = tmp_path / "copy"
    shutil.copytree(Path(coco["b"]).parent / "out", out)
    (out / "metrics.json").unlink()
    code, _, err = _compare(capsys, coco["a"], str(out))
    assert code == 3 and "has not finished" in err


def test_report_writes_through_symlinks_and_refuses_fifos(coco, tmp_path, capsys):
    """Issue 19.3: the temp-file-and-rename write replaced a symlink with a regular file, and a FIFO or
    (as root) ``/dev/full`` with a 600 KB file. Now a link is written through and stays a link, and
    anything that is not a regular file (directly or where a link leads) is refused, before the page is
    built, and left as it was."""
    real = tmp_path / "pages" / "real.html"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(real)
    assert main(["report", coco["a"], "-o", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text().startswith("<!DOCTYPE html>")
    capsys.readouterr()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    to_fifo = tmp_path / "to-fifo.html"
    to_fifo.symlink_to(fifo)
    for target, where in ((fifo, f"{fifo} is a FIFO"), (to_fifo, f"(where the link {to_fifo} leads) is a FIFO")):
        assert main(["report", coco["a"], "-o", str(target)]) == 3
        err = capsys.readouterr().err
        assert where in err and "never replaces anything else" in err and "hint: name a regular file" in err, err
        assert fifo.is_fifo() and to_fifo.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link.html", "pages", "to-fifo.html"]


@pytest.mark.parametrize("damage", [lambda data: data[: len(data) // 3], lambda data: b"not an image"])
def test_a_gallery_image_that_does_not_decode_is_named_in_its_caption(coco, digits, tmp_path, monkeypatch,
                                                                       capsys, damage):
    """The report is still written: the sample's caption says its image does not decode, and why."""
    from assay.report import finished

    real = finished.FinishedRun.images

    def damaged(self, ids):
        return {i: (ext, damage(data)) for i, (ext, data) in real(self, ids).items()}

    monkeypatch.setattr(finished.FinishedRun, "images", damaged)
    for job, args in ((coco["b"], ()), (digits["job"], ("--gallery", "3"))):
        text, page = _report(job, tmp_path / "r.html", *args)
        assert page.captions and all(" image (" in c and "does not decode: " in c for c in page.captions)
        assert "unexpected" not in capsys.readouterr().err


def test_report_and_compare_refuse_metrics_edited_after_the_run(digits, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(Path(digits["job"]).parent / "out", out)
    record = (out / "metrics.sha256").read_text()
    assert subprocess.run(["sha256sum", "-c", "metrics.sha256"], cwd=out, capture_output=True).returncode == 0
    doc = json.loads((out / "metrics.json").read_text())
    doc["summary"] = {k: 1.0 for k in doc["summary"]}
    (out / "metrics.json").write_text(json.dumps(doc, indent=1))
    for args in (["report", str(out), "-o", str(tmp_path / "r.html")], ["compare", str(out), digits["job"]]):
        assert main(args) == 3
        err = capsys.readouterr().err
        assert f"{out}/metrics.json does not match the digest recorded when cmp wrote it" in err, err
        assert "hint: rerun the job's cmp step" in err
    assert not (tmp_path / "r.html").exists()
    # an output made before cmp wrote the digest is still read
    (out / "metrics.sha256").unlink()
    assert main(["compare", str(out), digits["job"], "--format", "json"]) == 0
    capsys.readouterr()
    assert record.endswith("  metrics.json\n")


def test_readme_parquet_snippet_reads_a_real_runs_results(digits, monkeypatch):
    """The README's "any Parquet reader" snippet works on a run's output (beside shard-*.json records)."""
    text = (REPO / "README.md").read_text()
    at = text.index("any Parquet reader can query them")
    snippet = re.search(r"```python\n(.*?)```", text[at:], re.S).group(1)
    out = Path(digits["job"]).parent / "out"
    assert list((out / "results").glob("shard-*.json")), "the records the snippet must skip"
    monkeypatch.chdir(out.parent)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - the README's own code
    assert scope["table"].num_rows == digits["dataset"].samples
    assert "sample_id" in scope["table"].column_names
