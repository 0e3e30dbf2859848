"""Target 3: cmp speed (COCO bbox+segm on 5,000 images vs pycocotools' COCOeval) and cmp memory vs shards.

The 5,000 images are synthesised from the real PennFudanPed labels: image i takes the ground truth of
PennFudanPed image i mod 170 (instance masks as COCO RLE); its predictions are the ground-truth masks
shifted by a few pixels (a missed object now and then), plus false positives shifted far off, with
random scores. The reference is pycocotools run as its users run it (COCO, loadRes, COCOeval evaluate,
accumulate, summarize, for bbox and segm); assay's side is its whole ``coco`` evaluator (update per
sample, then compute), whose 12 stats per IoU type must equal the reference's to 1e-9.

Memory: cmp (``assay.runner.cmp.run``) over the same images split into 10 and into 50 shards, each in
a fresh process; peak RSS (VmHWM) and, in another run, tracemalloc's peak are compared.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.common import REPO, Row, Timer, require_data

SCHEMA = {"categories": [{"id": 1, "name": "pedestrian"}]}


def _base_labels():
    from pycocotools import mask as mask_util

    from assay.sources.pennfudan import read_label

    out = []
    for mask_png in sorted((require_data() / "PedMasks").glob("*_mask.png")):
        label = read_label(mask_png.read_bytes())
        masks = [mask_util.decode({"size": o["segmentation"]["size"],
                                   "counts": o["segmentation"]["counts"].encode()}) for o in label["objects"]]
        out.append((label, masks))
    return out


def _shifted(mask: np.ndarray, dx: int, dy: int):
    from pycocotools import mask as mask_util

    moved = np.zeros_like(mask)
    h, w = mask.shape
    ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    yd, xd = slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    moved[ys, xs] = mask[yd, xd]
    rle = mask_util.encode(np.asfortranarray(moved))
    x, y, bw, bh = mask_util.toBbox(rle)
    return [x, y, x + max(bw, 1.0), y + max(bh, 1.0)], rle["counts"]


def synthesise(n_images: int, seed: int = 0):
    """[(sample_id, label, prediction)] for ``n_images`` images."""
    from assay.handler import RLEMasks

    rng = np.random.default_rng(seed)
    base = _base_labels()
    variants = []  # per base image: per object: 4 near variants and 1 far one
    for _label, masks in base:
        per_obj = []
        for m in masks:
            near = [_shifted(m, int(rng.integers(-5, 6)), int(rng.integers(-5, 6))) for _ in range(4)]
            far = _shifted(m, int(rng.choice([-1, 1]) * rng.integers(30, 60)), int(rng.integers(-20, 20)))
            per_obj.append((near, far))
        variants.append(per_obj)
    records = []
    for i in range(n_images):
        b = i % len(base)
        label, _ = base[b]
        size = (label["height"], label["width"])
        boxes, counts = [], []
        for near, far in variants[b]:
            if rng.random() < 0.9:
                box, c = near[int(rng.integers(4))]
                boxes.append(box)
                counts.append(c)
            if rng.random() < 0.4:
                boxes.append(far[0])
                counts.append(far[1])
        n = len(boxes)
        pred = {"boxes": np.asarray(boxes, np.float32).reshape(n, 4),
                "scores": rng.uniform(0.05, 1.0, n).astype(np.float32),
                "labels": np.ones(n, np.int64), "masks": RLEMasks(size, tuple(counts))}
        records.append((f"img{i:06d}", label, pred))
    return records


def coco_dicts(records) -> tuple[dict, dict[str, list[dict]]]:
    """The ground-truth dataset and the bbox and segm result lists, as a user of the COCO API writes them:
    bbox results carry no mask and segm results no box (loadRes then takes the area from the mask, as
    assay's evaluator does; with a box it would take the box's area)."""
    images, anns, dets = [], [], {"bbox": [], "segm": []}
    for image_id, (_, label, pred) in enumerate(records, start=1):
        images.append({"id": image_id, "width": label["width"], "height": label["height"]})
        for o in label["objects"]:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "bbox": o["bbox"],
                         "area": o["area"], "iscrowd": 0, "segmentation": o["segmentation"]})
        b = pred["boxes"].astype(np.float64)
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).tolist()
        for k, c in enumerate(pred["masks"].counts):
            common = {"image_id": image_id, "category_id": 1, "score": float(pred["scores"][k])}
            dets["bbox"].append({**common, "bbox": xywh[k]})
            dets["segm"].append({**common, "segmentation": {"size": list(pred["masks"].size),
                                                            "counts": c.decode() if isinstance(c, bytes) else c}})
    return {"images": images, "annotations": anns, "categories": SCHEMA["categories"]}, dets


def reference(records) -> tuple[dict[str, list[float]], float]:
    """pycocotools COCOeval, run directly: {iou_type: 12 stats}, seconds."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with Timer() as t, contextlib.redirect_stdout(io.StringIO()):
        gt_dict, dets = coco_dicts(records)
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        stats = {}
        for iou_type in ("bbox", "segm"):
            ev = COCOeval(gt, gt.loadRes(dets[iou_type]), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats[iou_type] = [float(s) for s in ev.stats]
    return stats, t.seconds


def assay_eval(records) -> tuple[dict[str, list[float]], float, str]:
    from assay.metrics import get_evaluator

    with Timer() as t:
        ev = get_evaluator("coco", SCHEMA)
        for sample_id, label, pred in records:
            ev.update(sample_id, label, pred)
        report = ev.compute()
    return ({k: report.full[f"{k}/stats"] for k in ("bbox", "segm")}, t.seconds, report.full["engine"])


def run_speed(n_images: int) -> tuple[list[Row], dict]:
    records = synthesise(n_images)
    ref, ref_s = reference(records)
    ours, ours_s, engine = assay_eval(records)
    diff = max(abs(a - b) for k in ref for a, b in zip(ref[k], ours[k], strict=True))
    ratio = ref_s / ours_s
    dets = sum(len(p["scores"]) for _, _, p in records)
    rows = [Row("3 cmp speed", "pycocotools / assay seconds", ratio, ">= 3", ratio >= 3,
                f"{n_images} images, {dets} detections, bbox+segm: {ref_s:.1f}s vs {ours_s:.1f}s ({engine})"),
            Row("3 cmp exactness", "max |stat diff| (24 stats)", diff, "<= 1e-9", diff <= 1e-9,
                f"bbox AP {ours['bbox'][0]:.4f}, segm AP {ours['segm'][0]:.4f}")]
    return rows, {"ref_s": ref_s, "ours_s": ours_s, "diff": diff, "ref": ref, "ours": ours, "engine": engine}


# ----------------------------------------------------------------------------------------- memory

def write_job(folder: Path, records, n_shards: int) -> tuple[dict[str, str], float]:
    """A dataset manifest with labels files, one published results file per shard with its coco match
    tables (and the record ppl writes, so cmp's origin checks pass), and a model manifest; returns the
    URIs and the seconds spent matching (what ppl adds per shard for the coco evaluator)."""
    import hashlib

    from assay import layout, results, runrecord, storage
    from assay.metrics import coco_match, coco_tables, get_evaluator
    from assay.packages import ModelManifest
    from assay.shards import DatasetManifest, ShardInfo

    per = -(-len(records) // n_shards)
    uris = {"dataset": str(folder / "data"), "output": str(folder / "out"), "model": str(folder / "model")}
    infos, labels_by_shard = [], []
    for s in range(n_shards):
        chunk = records[s * per:(s + 1) * per]
        name = layout.shard_name(s)
        labels = json.dumps({"samples": [{"id": i, "label": lbl} for i, lbl, _ in chunk]}, sort_keys=True)
        storage.write_text(f"{uris['dataset']}/{name}.labels.json", labels)
        labels_by_shard.append(chunk)
        infos.append(ShardInfo(name=name, samples=len(chunk), bytes=1, sha256=f"shard-{s}",
                               labels_sha256=hashlib.sha256(labels.encode()).hexdigest(), first=s * per))
    manifest = DatasetManifest(name="d", version="v1", samples=len(records), label_schema=SCHEMA, shards=infos)
    storage.write_text(f"{uris['dataset']}/manifest.json", manifest.to_json())
    model = ModelManifest(name="m", version="m1", handler="h:H", evaluator="coco", files=[], package_bytes=1,
                          package_sha256="x")
    storage.write_text(f"{uris['model']}/manifest.json", model.to_json())
    ident = runrecord.identity(_context(uris), model, manifest)
    matching = 0.0
    for s, chunk in enumerate(labels_by_shard):
        meta = {"dataset_version": "v1", "model_version": "m1", "shard": infos[s].name,
                "shard_sha256": infos[s].sha256, "settings_hash": ident.settings_hash}
        path, m_path = folder / "r.parquet", folder / "m.parquet"
        results.write_local(path, [i for i, _, _ in chunk], [p for _, _, p in chunk], meta)
        with Timer() as t:  # what ppl's _write_matches does
            ev = get_evaluator("coco", SCHEMA)
            for sample_id, label, pred in chunk:
                ev.update(sample_id, label, pred)
            coco_tables.write(m_path, ev.match(s * per), meta)
        matching += t.seconds
        results.publish(path, uris["output"], s, {**meta, "samples": len(chunk)},
                        (m_path, {"version": coco_match.TABLE_VERSION}))
    return uris, matching


def _context(uris: dict[str, str]):
    from assay.spec import RunContext

    return RunContext(job_name="m", model_uri=uris["model"], dataset_uri=uris["dataset"], output_uri=uris["output"])


# Peak RSS is the process's own VmHWM. getrusage's ru_maxrss would not do: Linux carries the parent's
# high-water mark across fork and exec into it, so a child of this (large) bench process reported the
# parent's size. tracemalloc costs memory per allocation, so the RSS run and the heap run are separate.
_CHILD = """
import json, sys, tracemalloc
from assay.runner import cmp
from assay.spec import RunContext
uris, traced = json.loads(sys.argv[1]), sys.argv[2] == "traced"
ctx = RunContext(job_name="m", model_uri=uris["model"], dataset_uri=uris["dataset"], output_uri=uris["output"])
if traced:
    tracemalloc.start()
cmp.run(ctx)
if traced:
    print(json.dumps({"traced_mb": tracemalloc.get_traced_memory()[1] / 2**20}))
else:
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"rss_mb": int(hwm.split()[1]) / 1024}))
"""


def run_memory(work: Path, n_images: int, shard_counts=(10, 50)) -> tuple[list[Row], dict]:
    records = synthesise(n_images, seed=1)
    got = {}
    for n in shard_counts:
        uris, _ = write_job(work / f"cmp-{n}", records, n)
        got[n] = {}
        for mode in ("rss", "traced"):
            out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(uris), mode], capture_output=True,
                                 text=True, cwd=REPO, check=True)
            got[n].update(json.loads(out.stdout.strip().splitlines()[-1]))
    lo, hi = shard_counts
    rss = got[hi]["rss_mb"] / got[lo]["rss_mb"]
    traced = got[hi]["traced_mb"] / got[lo]["traced_mb"]
    rows = [Row("3 cmp memory", f"peak RSS {hi} / {lo} shards", rss, "~1 (<= 1.10)", rss <= 1.10,
                f"same {n_images} images; {got[lo]['rss_mb']:.0f} vs {got[hi]['rss_mb']:.0f} MB RSS, "
                f"Python heap peak {got[lo]['traced_mb']:.0f} vs {got[hi]['traced_mb']:.0f} MB ({traced:.2f}x)")]
    return rows, got
