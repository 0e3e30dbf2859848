"""The PennFudanPed example end to end with a real (tiny, barely trained) Mask R-CNN on CPU.

Checks the example's train.py export, handler and model.yaml work together through ppl and cmp; the
metric values of a one-step model mean nothing, only that they exist and are valid.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from assay import packages
from assay.runner import cmp, ppl
from assay.spec import RunContext

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pennfudan"


def test_train_package_and_evaluate(pennfudan_dir, test_split, tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for name in ("handler.py", "model_def.py", "model.yaml"):
        shutil.copy(EXAMPLE / name, pkg / name)
    proc = subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--data", str(pennfudan_dir), "--out", str(pkg),
                           "--arch", "mobilenet_v3_fpn", "--min-size", "128", "--max-size", "192", "--epochs", "1",
                           "--time-budget", "1", "--batch-size", "2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "153 images" in proc.stdout, "training uses every image outside the 17-image test split"
    config = json.loads((pkg / "config.json").read_text())
    assert config["arch"] == "mobilenet_v3_fpn" and config["trained_steps"] >= 1
    model = packages.build(packages.load_config(pkg / "model.yaml"), str(tmp_path / "store"), log=lambda s: None)
    ctx = RunContext(job_name="example", model_uri=model.uri, dataset_uri=test_split.uri,
                     output_uri=str(tmp_path / "out"), batch_size=4, device="cpu")
    summary = ppl.run(ctx)
    assert summary.samples_done == 17
    report = cmp.run(ctx)
    for iou in ("bbox", "segm"):
        for stat in ("AP", "AP50", "AR100"):
            assert 0.0 <= report.summary[f"{iou}/{stat}"] <= 1.0
