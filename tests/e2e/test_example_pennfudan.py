"""The PennFudanPed example end to end with a real (tiny, barely trained) Mask R-CNN on CPU.

Checks the example's train.py export, handler and model.yaml work together through ppl and cmp; the
metric values of a one-step model mean nothing, only that they exist and are valid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pennfudan"


def test_train_package_and_evaluate(trained_example):
    """train.py's export (the demo's step 2), the example's handler and model.yaml, packaged and run
    through ppl and cmp (the demo's step 5): valid metrics of that model on the 17-image split."""
    assert "on 153 images" in trained_example.proc.stdout, "training uses every image outside the test split"
    config = json.loads((trained_example.model_dir / "config.json").read_text())
    assert config["arch"] == "resnet18_gn_fpn" and config["trained_steps"] == 2
    metrics = json.loads((trained_example.job_dir / "metrics.json").read_text())
    assert metrics["model"]["name"] == "pennfudan-maskrcnn" and metrics["dataset"]["samples"] == 17
    for iou in ("bbox", "segm"):
        for stat in ("AP", "AP50", "AR100"):
            assert 0.0 <= metrics["summary"][f"{iou}/{stat}"] <= 1.0


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)


def test_train_weights_errors_are_one_line(pennfudan_dir, tmp_path):
    """Pins issue 12: `train.py --weights FILE` with a missing or wrong file ended in a traceback."""
    missing = _run([sys.executable, str(EXAMPLE / "train.py"), "--data", str(pennfudan_dir), "--out", str(tmp_path),
                    "--weights", str(tmp_path / "nope.pth"), "--steps", "0"])
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().count("\n") == 0 and "no such file" in missing.stderr
    assert "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth" in missing.stderr, "says where the file comes from"
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    junk = _run([sys.executable, str(EXAMPLE / "train.py"), "--data", str(pennfudan_dir), "--out", str(tmp_path),
                 "--weights", str(tmp_path / "junk.pth"), "--steps", "0"])
    assert junk.returncode == 1 and "Traceback" not in junk.stderr and "not a torch state dict" in junk.stderr
    # --pretrained without network (a proxy that refuses; an empty torch cache): one line, and what to do
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9"}
    offline = _run([sys.executable, str(EXAMPLE / "train.py"), "--data", str(pennfudan_dir), "--out", str(tmp_path),
                    "--pretrained", "--steps", "0"], env=env)
    assert offline.returncode == 1 and "Traceback" not in offline.stderr
    assert offline.stderr.strip().splitlines()[-1].startswith("error: cannot download the COCO weights")
    assert "pass --weights FILE" in offline.stderr


def test_demo_weights_missing_file_is_one_line(tmp_path):
    proc = _run([sys.executable, str(EXAMPLE / "demo.py"), "--weights", str(tmp_path / "coco.pth"),
                 "--workdir", str(tmp_path / "work"), "--store", str(tmp_path / "store")])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: --weights {tmp_path / 'coco.pth'}: no such file "
                                                "(download it from https://download.pytorch.org/models/"
                                                "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth)"]


def test_make_demo_runs_the_whole_demo(trained_example):
    """The README's first command, with a 2-step model (the run's one training, in the fixture): data,
    training, build into the store, the pipeline check's line, the tables."""
    store, out = trained_example.store, trained_example.proc.stdout
    assert "training resnet18_gn_fpn for 2 steps" in out
    assert "bbox AP 1.000, segm AP 1.000: the pipeline scores exactly" in out
    assert "COCO bbox (17 images)" in out and "COCO segm (17 images)" in out and "\nmodel:          bbox AP " in out
    assert f"store: {store}" in out
    # what the demo built is what the CLI finds in that store, by name
    info = _run([sys.executable, "-m", "assay.cli.main", "dataset", "info", "pennfudan", "--store", str(store)])
    assert info.returncode == 0 and "samples: 17" in info.stdout, info.stderr
    info = _run([sys.executable, "-m", "assay.cli.main", "model", "info", "pennfudan-maskrcnn", "--store", str(store)])
    assert info.returncode == 0 and "handler: handler:MaskRCNNHandler" in info.stdout, info.stderr
