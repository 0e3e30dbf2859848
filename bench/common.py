"""Shared pieces of the benchmarks: paths, the machine, the result row, the model package and a dataset."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: The real PennFudanPed, beside the repository (never copied into it).
DATA = REPO.parent / "shared" / "data" / "PennFudanPed"
EXAMPLE = REPO / "examples" / "pennfudan"
SEED = 0


@dataclass
class Row:
    """One line of the table: a target, what was measured, the ratio and whether it meets the goal."""

    target: str
    metric: str
    value: float | None
    goal: str
    met: bool | None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[str]:
        value = "n/a" if self.value is None else f"{self.value:.3g}"
        met = {True: "met", False: "NOT met", None: "-"}[self.met]
        return [self.target, self.metric, value, self.goal, met, self.detail]


def machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "torch": torch.__version__, "gpu": gpu,
            "python": sys.version.split()[0], "torch_threads": str(torch.get_num_threads())}


def require_data() -> Path:
    if not (DATA / "PNGImages").is_dir():
        raise SystemExit(f"PennFudanPed not found at {DATA}: the benchmarks use the real dataset")
    return DATA


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


@dataclass(frozen=True)
class ModelSpec:
    """The benchmark model: torchvision Mask R-CNN R50-FPN, randomly initialised with a fixed seed.

    Throughput does not depend on training, but an untrained head scores almost every proposal high,
    so detections are capped (``detections``) to resemble a trained pedestrian model's output
    (PennFudanPed has 1 to 8 people per image) and keep RLE and mask pasting at a realistic cost.
    """

    min_size: int = 192
    max_size: int = 288
    detections: int = 10
    score_thresh: float = 0.05

    def config(self) -> dict[str, Any]:
        return {"arch": "resnet50_fpn", "num_classes": 2, "min_size": self.min_size, "max_size": self.max_size,
                "box_detections_per_img": self.detections, "box_score_thresh": self.score_thresh,
                "label_map": {"1": 1}}


def build(spec: ModelSpec):
    """The model itself (what the handler builds), weights from a fixed seed."""
    import torch

    sys.path.insert(0, str(EXAMPLE))
    from model_def import build_model

    torch.manual_seed(SEED)
    model = build_model("resnet50_fpn", 2, spec.min_size, spec.max_size)
    model.roi_heads.detections_per_img = spec.detections
    model.roi_heads.score_thresh = spec.score_thresh
    return model.eval()


def model_package(spec: ModelSpec, work: Path, store: str):
    """An assay model package of the example handler with random weights; returns its manifest."""
    import torch

    from assay import packages

    src = work / "model-src"
    src.mkdir(parents=True, exist_ok=True)
    for name in ("handler.py", "model_def.py"):
        shutil.copy(EXAMPLE / name, src / name)
    torch.save(build(spec).state_dict(), src / "maskrcnn.pt")
    (src / "config.json").write_text(json.dumps(spec.config()))
    config = packages.ModelConfig(name="bench-maskrcnn", weights=["maskrcnn.pt", "config.json"],
                                  code=["handler.py", "model_def.py"], handler="handler:MaskRCNNHandler",
                                  evaluator="coco", base_dir=src)
    return packages.build(config, store, log=lambda *_: None), src


def dataset(store: str, data_filter: str, volume_size: int, name: str = "bench-pennfudan"):
    """Build PennFudanPed images matching ``data_filter`` into ``store`` (assay's own dataset build)."""
    from assay import datasets

    label_filter = data_filter.replace("PNGImages/", "PedMasks/").replace(".png", "_mask.png")
    config = datasets.DatasetConfig(name=name, data_dir=require_data(), data_filter=data_filter,
                                    label_filter=label_filter, process="pennfudan", volume_size=volume_size,
                                    base_dir=REPO)
    return datasets.build(config, store, log=lambda *_: None)


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in Path(path).rglob(pattern) if p.is_file())
