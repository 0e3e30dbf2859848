"""Issue 19, "data loss and hangs": assay must not delete, replace or wait on what is not its own.

Each test names the defect it pins; each failed (or hung) before its fix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assay import datasets
from assay.cli.main import main
from assay.errors import SpecError
from tests.conftest import write_dataset_yaml

# ------------------------------------------------------------------ 19.5: non-regular files among the inputs


def _pennfudan_copy(tmp: Path, real: Path, names: list[str]) -> Path:
    """A PennFudanPed layout in ``tmp`` whose images and masks are symlinks to the real ones."""
    for sub in ("PNGImages", "PedMasks"):
        (tmp / sub).mkdir(parents=True)
    for name in names:
        (tmp / "PNGImages" / f"{name}.png").symlink_to(real / "PNGImages" / f"{name}.png")
        (tmp / "PedMasks" / f"{name}_mask.png").symlink_to(real / "PedMasks" / f"{name}_mask.png")
    return tmp


def test_a_fifo_among_pennfudan_images_is_named_not_waited_on(pennfudan_dir, tmp_path, capsys):
    """Before: reading the FIFO blocked `assay dataset build` forever, with a staging shard left behind."""
    data = _pennfudan_copy(tmp_path / "data", pennfudan_dir, ["FudanPed00016"])
    os.mkfifo(data / "PNGImages" / "FudanPed00026.png")  # with a real mask, so the source accepts the pair
    (data / "PedMasks" / "FudanPed00026_mask.png").symlink_to(pennfudan_dir / "PedMasks" / "FudanPed00026_mask.png")
    config = datasets.load_config(write_dataset_yaml(tmp_path, data))
    with pytest.raises(SpecError, match=r"selects 1 entry that is not a readable file: .*"
                                                 r"FudanPed00026\.png \(a FIFO\)"):
        datasets.load_source(config)
    store = tmp_path / "store"
    assert main(["dataset", "build", str(tmp_path / "dataset.yaml"), "--store", str(store)]) == 3
    err = capsys.readouterr().err
    assert "FudanPed00026.png (a FIFO)" in err and "hint: remove or replace them" in err
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*")), "nothing staged"


def test_imagefolder_names_a_fifo_and_a_dangling_symlink(tmp_path, capsys):
    """Before: the imagefolder source skipped both silently and built a smaller dataset."""
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "data" / cls / "1.png")
    os.mkfifo(tmp_path / "data" / "cat" / "2.png")
    (tmp_path / "data" / "dog" / "2.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "dataset.yaml").write_text(f"name: pets\ndata_dir: {tmp_path / 'data'}\ndata_filter: '*/*.png'\n"
                                           "process: imagefolder\n")
    assert main(["dataset", "build", str(tmp_path / "dataset.yaml"), "--store", str(tmp_path / "store")]) == 3
    err = capsys.readouterr().err
    assert "selects 2 entries that are not a readable file" in err, err
    assert "cat/2.png (a FIFO)" in err and f"dog/2.png (a symlink to the missing {tmp_path / 'gone.png'})" in err


def test_yolo_names_a_label_file_that_is_a_fifo(tmp_path):
    """Before: a FIFO (or dangling link) as an image's label file counted as "no label": the image's
    objects were silently dropped."""
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    os.mkfifo(tmp_path / "labels" / "b.txt")
    (tmp_path / "classes.txt").write_text("thing\n")
    (tmp_path / "dataset.yaml").write_text("name: t\ndata_dir: .\ndata_filter: 'images/*.png'\n"
                                           "label_filter: classes.txt\nprocess: yolo\n")
    with pytest.raises(SpecError, match=r"label file .*labels/b\.txt of .*images/b\.png is not a readable"):
        datasets.load_source(datasets.load_config(tmp_path / "dataset.yaml"))


# ------------------------------------------------------------------ 19.4: huge finite boxes in the report

_DRAW = """
import io, sys, numpy as np
from PIL import Image
from assay.report import overlay
buf = io.BytesIO(); Image.new("RGB", (60, 40), (9, 9, 9)).save(buf, format="PNG")
far = float(sys.argv[1])
label = {"objects": [{"bbox": [10, 10, 20, 10]}, {"bbox": [-far, -far, 3 * far, 3 * far]}]}
boxes = [[-far, -far, far, far], [5, 5, far, 30], [far, far, 2 * far, 2 * far]] + [[-far, 0, far, 9]] * 3
prediction = {"boxes": np.array(boxes), "scores": np.array([0.9, 0.8, 0.7, 0.6, 0.6, 0.6])}
jpeg, hidden = overlay.detections(buf.getvalue(), label, prediction)
img = Image.open(io.BytesIO(jpeg)).convert("RGB")
print(hidden, img.size, img.getpixel((10 * 96 // 60, 30 * 96 // 60)))
"""


@pytest.mark.parametrize("far", ["1e9", "1e30"])
def test_report_draws_huge_finite_boxes_clipped(far):
    """Before: PIL drew the unclipped outline, pixel by pixel: ±1e9 ran for minutes (still going after
    300 s on 6 images), ±1e30 raised SystemError. Now boxes are clipped to the image first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        done = subprocess.run([sys.executable, "-c", _DRAW, far], capture_output=True, text=True, timeout=15,
                              env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"drawing boxes at {far} did not finish in 15 s (it takes well under 1 s)")
    assert done.returncode == 0, done.stderr[-2000:]
    hidden, size, inside = done.stdout.split(" ", 2)
    assert hidden == "0" and "(96, 64)" in f"{size} {inside}"


def test_cmp_scores_huge_finite_boxes_as_misses():
    """cmp accepts finite boxes beyond the image (a detector may overshoot; docs/formats.md says so) and
    scores them as pycocotools does: a box at ±1e30 matches nothing and, being far above COCO's "all"
    area range (1e10 px²), is ignored rather than counted as a false positive."""
    import numpy as np

    from assay.metrics import get_evaluator

    schema = {"task": "detection", "categories": [{"id": 1, "name": "thing"}]}
    label = {"height": 40, "width": 60, "objects": [{"category_id": 1, "bbox": [10.0, 10.0, 20.0, 10.0],
                                                     "area": 200.0, "iscrowd": 0}]}
    ev = get_evaluator("coco", schema)
    ev.update("a", label, {"boxes": np.array([[10.0, 10.0, 30.0, 20.0], [-1e30, -1e30, 1e30, 1e30]]),
                           "scores": np.array([0.5, 0.9]), "labels": np.array([1, 1])})
    summary = ev.compute().summary
    assert summary["bbox/AP"] == 1.0, summary


# ------------------------------------------------------------------ 19.1: cleaning only what is assay's

DAY = 86400


def _old(path: Path, text: str = "user's") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (time.time() - 2 * DAY,) * 2)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_clean_stale_removes_only_assay_named_entries_of_dead_writers(tmp_path):
    """Before: clean_stale walked the whole tree and removed every old ``.tmp-*`` and everything in any
    ``.staging`` folder (another tool's deploy bundle, a draft)."""
    from assay import storage
    from assay.storage import hygiene

    host = hygiene.owner().partition("@")[2]
    theirs = [_old(tmp_path / "src" / ".staging" / "deploy-bundle.tar"), _old(tmp_path / "docs" / ".tmp-draft.md"),
              _old(tmp_path / ".tmp-notes"), _old(tmp_path / ".staging" / "their-upload.bin"),
              _old(tmp_path / "results" / "x" / f".tmp-{_dead_pid()}@{host}-abcd1234")]  # not a folder assay writes into
    dead = _dead_pid()
    ours = [_old(tmp_path / f".tmp-{dead}@{host}-0a1b2c3d"),
            _old(tmp_path / ".staging" / f"assay-dataset-{dead}@{host}-k3j4h5g6" / "shard-000000.tar").parent]
    in_results = _old(tmp_path / "results" / f".tmp-{dead}@{host}-zz_zz_zz")
    live = _old(tmp_path / "results" / f".tmp-{os.getpid()}@{host}-livelive")
    assert sorted(storage.clean_stale(str(tmp_path))) == sorted(map(str, ours))
    assert all(p.exists() for p in (*theirs, live, in_results)) and not any(p.exists() for p in ours)
    assert storage.clean_stale(str(tmp_path), folders=("results",)) == [str(in_results)]  # named folders only
    assert all(p.exists() for p in (*theirs, live))


def test_run_refuses_the_manifests_folder_and_foreign_files(tmp_path, test_split, oracle_model, capsys):
    """Before: ``output: {uri: "."}`` ran, exited 0, and deleted the project's old ``.tmp-*`` files and
    everything in its ``.staging`` folders. Now the manifest's own folder and an output that holds files
    no run writes are refused (exit 3, naming them), before anything is written."""
    import yaml

    from tests.conftest import job_manifest

    project = tmp_path / "project"
    bundle = _old(project / "src" / ".staging" / "deploy-bundle.tar")
    draft = _old(project / "docs" / ".tmp-draft.md")
    manifest = project / "job.yaml"
    manifest.write_text(yaml.safe_dump(job_manifest("dot", oracle_model.uri, test_split.uri, ".", workers=1)))
    before = sorted(p.relative_to(project).as_posix() for p in project.rglob("*"))
    assert main(["run", str(manifest), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert f"spec.output.uri {project} is the folder of the manifest {manifest}" in err, err
    assert "hint: set spec.output.uri to a folder of its own" in err
    assert bundle.exists() and draft.exists()
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*")) == before, "nothing written"

    manifest.write_text(yaml.safe_dump(job_manifest("src", oracle_model.uri, test_split.uri, "src", workers=1)))
    _old(project / "src" / "main.py")
    assert main(["run", str(manifest), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert f"output {project / 'src'} already holds entries that no assay run writes: main.py\n" in err, err
    assert bundle.exists() and (project / "src" / "main.py").exists()


# ------------------------------------------------------------------ 19.2: --overwrite deletes only the run's files

_USERS = ("results/README.md", "logs/my-notes.txt", "progress/plan.txt", "results/sub/shard-000000.parquet")


def test_overwrite_deletes_only_the_old_runs_files_and_says_which(tmp_path, test_split, oracle_model, capsys):
    """Before: --overwrite deleted everything under results/, logs/ and progress/ without a word (a
    results/README.md, logs/my-notes.txt). Now only the names a run gives its files go, listed first."""
    import json

    import yaml

    from tests.conftest import job_manifest

    manifest = tmp_path / "job.yaml"
    doc = job_manifest("ow", oracle_model.uri, test_split.uri, "out", workers=1)
    manifest.write_text(yaml.safe_dump(doc))
    assert main(["run", str(manifest), "--no-progress"]) == 0
    out = tmp_path / "out"
    for name in _USERS:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("mine")
    doc["spec"]["ppl"]["batchSize"] = 2  # another run's settings: refused without --overwrite
    manifest.write_text(yaml.safe_dump(doc))
    capsys.readouterr()
    assert main(["run", str(manifest), "--no-progress", "--overwrite"]) == 0
    err = capsys.readouterr().err
    shards = len(test_split.shards)
    # per shard: results, coco match tables, record
    assert "--overwrite: deleting the old run's " in err and f"results/ ({3 * shards} files)" in err, err
    assert "metrics.json, " in err and "logs/ (" in err and ", run.json;" in err
    assert "progress/ (" not in err, "a run writes no progress objects any more"
    assert "keeping 4 files no run writes: logs/my-notes.txt, progress/plan.txt, results/README.md, " \
           "results/sub/shard-000000.parquet" in err, err
    assert all((out / name).read_text() == "mine" for name in _USERS)
    assert json.loads((out / "run.json").read_text())["settings"]["batchSize"] == 2


def test_overwrite_on_s3_deletes_only_the_old_runs_files(s3):
    from assay import runrecord, storage

    s3.create_bucket(Bucket="assay-ow")
    run = ["run.json", "metrics.json", "summary.txt", "results/shard-000000.parquet", "results/shard-000000.json",
           "progress/ppl-0000.json", "logs/ppl-0000.log", "logs/cmp.log"]
    for name in [*run, *_USERS, "lease.json"]:
        storage.write_text(f"s3://assay-ow/job/{name}", "x")
    ours, kept = runrecord.old_run_files("s3://assay-ow/job")
    assert sorted(ours) == sorted(run) and ours[-1] == "run.json" and sorted(kept) == sorted(_USERS)
    assert runrecord.clear("s3://assay-ow/job") == len(run)
    assert storage.list_names("s3://assay-ow/job") == sorted([*_USERS, "lease.json"])


# ------------------------------------------------------------------ 19.6: what a handler starts ends with the run

_SPAWNER = '''import os
import subprocess

from handler import OracleHandler


class Spawner(OracleHandler):
    def load(self, model_dir, device):
        super().load(model_dir, device)
        self.helper = subprocess.Popen(["sleep", "300"])  # e.g. a model server the handler talks to
        with open(os.environ["ASSAY_TEST_PIDS"], "a") as f:
            f.write(f"{self.helper.pid}\\n")
'''


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def test_processes_a_handler_starts_end_with_the_run(tmp_path, test_split, store, monkeypatch, capsys):
    """Before: workers died with the parent, but a subprocess started in the handler's load() kept
    running after `assay run` exited 0. Now each worker leads a process group that the run ends."""
    import shutil

    import yaml

    from assay import packages
    from tests.conftest import FIXTURES, job_manifest

    pkg = tmp_path / "pkg"
    shutil.copytree(FIXTURES / "oracle", pkg)
    (pkg / "spawner.py").write_text(_SPAWNER)
    cfg = yaml.safe_load((pkg / "model.yaml").read_text())
    cfg.update(name="spawner", code=[*cfg["code"], "spawner.py"], run={**cfg["run"], "handler": "spawner:Spawner"})
    (pkg / "model.yaml").write_text(yaml.safe_dump(cfg))
    model = packages.build(packages.load_config(pkg / "model.yaml"), store, log=lambda s: None)
    pids_file = tmp_path / "pids"
    monkeypatch.setenv("ASSAY_TEST_PIDS", str(pids_file))
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job_manifest("spawn", model.uri, test_split.uri, "out", workers=2)))
    assert main(["run", str(manifest), "--no-progress"]) == 0, capsys.readouterr().err
    pids = [int(line) for line in pids_file.read_text().split()]
    try:
        assert len(pids) == 2, "each worker loaded the handler once"
        assert not [pid for pid in pids if _running(pid)], "the handler's helpers outlived the run"
    finally:
        for pid in pids:
            if _running(pid):
                os.kill(pid, 9)
