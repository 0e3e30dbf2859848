"""Target 2: the seed's way of running ppl, reimplemented faithfully, vs assay's ppl on the same images.

Starwhale's PennFudanPed example (example/PennFudanPed/code/ppl.py) did, for every batch: unpickle the
batch's image bytes, rebuild the model (``maskrcnn_resnet50_fpn`` with new box and mask heads, then
``load_state_dict(torch.load(path))``), and then for one image at a time: PIL decode, ``to_tensor``,
``model([image])``, outputs to the CPU, and the outputs (masks included, as float probabilities) turned
into JSON lists. The model here is the benchmark's (same architecture, input size and caps as assay's
run) so only the way of running differs. ``pretrained_backbone`` is off: nothing can be downloaded.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

from bench.common import ModelSpec, Row, Timer, build

BATCH = 4


def _seed_ppl(data: bytes, weights: Path, spec: ModelSpec) -> list[dict]:
    import torch
    from PIL import Image
    from torchvision.transforms import functional as F

    with torch.no_grad():
        model = build(spec)  # rebuilt for every batch, as the seed did
        model.load_state_dict(torch.load(weights))
        model.eval()
        out = []
        for file_bytes in pickle.loads(data):
            image = F.to_tensor(Image.open(io.BytesIO(file_bytes)).convert("RGB"))
            (o,) = model([image])
            o = {k: v.to("cpu") for k, v in o.items()}
            o["height"], o["width"] = image.shape[-2], image.shape[-1]
            out.append(o)
        return out


def run(work: Path, spec: ModelSpec, samples, assay_ips: float, weights: Path) -> tuple[list[Row], dict]:
    path = work / "seed-results.jsonl"
    images = [s.files["png"] for s in samples]
    json_bytes = []
    with Timer() as t, open(path, "w") as f:
        for i in range(0, len(images), BATCH):
            for o in _seed_ppl(pickle.dumps(images[i:i + BATCH]), weights, spec):
                line = json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in o.items()})
                json_bytes.append(len(line))
                f.write(line + "\n")
    seed_ips = len(images) / t.seconds
    path.unlink()
    ratio = assay_ips / seed_ips
    rows = [Row("2 vs the seed's ppl (CPU)", "assay / seed images/s", ratio, ">= 5", ratio >= 5,
                f"{assay_ips:.3f} vs {seed_ips:.3f} img/s on the same {len(images)} images")]
    return rows, {"seed_ips": seed_ips, "json_bytes": json_bytes, "seed_s": t.seconds}
