"""Issue 22: cmp from match tables at scale, with the single-process COCO engines measured in the same run.

Images are synthesised from the real PennFudanPed labels as in bench/cmp.py (image i takes the ground
truth of PennFudanPed image i mod 170, about 2.5 objects with instance masks), with about 10 detections
per image: each object found by a shifted copy of its mask (90%), the rest shifted far off (false
positives), scores uniform. Sizes up to ``real_max`` images go the whole way: the ppl side's matching
per shard (``CocoEvaluator.match``, timed per image), the match-table files, and cmp
(``assay.runner.cmp.run`` over a published run, in a fresh process: wall time and peak RSS). Above that
the match tables are generated directly (bbox only, the same shape of data) and cmp's merge and
accumulate (``MatchesMerge`` over the table files, one at a time, as cmp does) is timed in a fresh process.

Peers, single-process on all images, from COCO dicts built beforehand (the build is not timed):
pycocotools, faster-coco-eval and hotcoco (when installed), each evaluate + accumulate + summarize for
bbox and segm. A peer whose extrapolated time would pass ``peer_budget_s`` is not run; its row says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.cmp import _base_labels, _shifted, coco_dicts, write_job
from bench.common import REPO, Row, Timer

DETS_PER_IMAGE = 10


def synthesise(n_images: int, seed: int = 0):
    """[(sample_id, label, prediction)]: PennFudanPed ground truth, ~10 detections with masks per image."""
    from assay.handler import RLEMasks

    rng = np.random.default_rng(seed)
    base = _base_labels()
    variants = []
    for _label, masks in base:
        variants.append([([_shifted(m, int(rng.integers(-5, 6)), int(rng.integers(-5, 6))) for _ in range(3)],
                          [_shifted(m, int(rng.choice([-1, 1]) * rng.integers(20, 60)), int(rng.integers(-20, 20)))
                           for _ in range(3)]) for m in masks])
    records = []
    for i in range(n_images):
        b = i % len(base)
        label, _ = base[b]
        found = [near[int(rng.integers(3))] for near, _ in variants[b] if rng.random() < 0.9]
        far = [v for _, fars in variants[b] for v in fars]
        picks = found + [far[int(k)] for k in rng.integers(0, len(far), max(0, DETS_PER_IMAGE - len(found)))]
        n = len(picks)
        pred = {"boxes": np.asarray([p[0] for p in picks], np.float32).reshape(n, 4),
                "scores": rng.uniform(0.05, 1.0, n).astype(np.float32), "labels": np.ones(n, np.int64),
                "masks": RLEMasks((label["height"], label["width"]), tuple(p[1] for p in picks))}
        records.append((f"img{i:07d}", label, pred))
    return records


def _peer(name: str, gt_dict: dict, dets: dict[str, list[dict]]) -> tuple[float, dict[str, list[float]]]:
    """(seconds, {iou_type: 12 stats}) of one engine's whole COCOeval, one process, bbox then segm."""
    stats = {}
    with Timer() as t, contextlib.redirect_stdout(io.StringIO()):
        for iou_type, res in dets.items():
            res = [dict(d) for d in res]
            if name == "hotcoco":
                import hotcoco

                gt = hotcoco.COCO(gt_dict)
                ev = hotcoco.COCOeval(gt, gt.load_res(res), iou_type)
            else:
                if name == "faster-coco-eval":
                    from faster_coco_eval import COCO
                    from faster_coco_eval import COCOeval_faster as COCOeval
                else:
                    from pycocotools.coco import COCO
                    from pycocotools.cocoeval import COCOeval
                gt = COCO()
                gt.dataset = json.loads(json.dumps(gt_dict))
                gt.createIndex()
                ev = COCOeval(gt, gt.loadRes(res), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats[iou_type] = [float(s) for s in ev.stats[:12]]
    return t.seconds, stats


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name.replace("-", "_")) is not None


def synthetic_tables(folder: Path, n_images: int, n_shards: int, seed: int = 0) -> list[Path]:
    """Match-table files for ``n_images`` generated directly: per image ~2.5 objects and 10 detections of
    one category, matched bits monotone in the IoU threshold, area ranges from random areas."""
    from assay.metrics import coco_tables
    from assay.metrics.coco_match import IOU_THRESHOLDS, CocoMatches, MatchTable

    rng = np.random.default_rng(seed)
    per = -(-n_images // n_shards)
    t_n = len(IOU_THRESHOLDS)
    paths = []
    for s in range(n_shards):
        lo, hi = s * per, min(n_images, (s + 1) * per)
        n = hi - lo
        n_gt = rng.integers(1, 5, n)
        n_dt = np.full(n, DETS_PER_IMAGE)
        d = int(n_dt.sum())
        score = np.sort(rng.uniform(0.05, 1.0, d).astype(np.float32).astype(np.float64).reshape(n, -1),
                        axis=1)[:, ::-1].reshape(-1)  # each cell's detections in evaluateImg's order
        iou = np.where(rng.random(d) < 0.25, rng.uniform(0.5, 1.0, d), 0.0)
        area_class = rng.integers(1, 4, d)  # small, medium, large
        matched = np.zeros(d, np.uint64)
        ignored = np.zeros(d, np.uint64)
        for t in range(t_n):
            hit = iou >= IOU_THRESHOLDS[t]
            for a in range(4):
                bit = np.uint64(16 * a + t)
                inside = (a == 0) | (area_class == a)
                matched |= (hit & inside).astype(np.uint64) << bit
                ignored |= (~inside & ~(hit & inside)).astype(np.uint64) << bit
        gt_counts = np.stack([n_gt] + [rng.binomial(n_gt, 1 / 3) for _ in range(3)], axis=1).astype(np.int32)
        table = MatchTable(np.arange(lo, hi, dtype=np.int64), np.zeros(n, np.int32), n_dt.astype(np.int32),
                           gt_counts, score, matched, ignored)
        m = CocoMatches(image_offset=lo, sample_ids=[f"img{i:07d}" for i in range(lo, hi)], tables={"bbox": table},
                        num_ground_truth={1: int(n_gt.sum())}, num_detections=d, unknown_category_dets=0,
                        presence={"gt_segmentation": [None, None], "pred_masks": [None, None]})
        paths.append(folder / f"m{s}.parquet")
        coco_tables.write(paths[-1], m, {})
    return paths


# Peak RSS is the process's own VmHWM (see bench/cmp.py for why not getrusage).
_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import pycocotools.cocoeval, pyarrow.parquet  # what cmp imports on its way, timed apart
import tempfile
from pathlib import Path
from assay.metrics import coco_tables
from assay.metrics.coco import MatchesMerge
from assay.runner import cmp
from assay.spec import RunContext
mode, arg = sys.argv[1], json.loads(sys.argv[2])
t1 = time.perf_counter()
if mode == "cmp":
    report = cmp.run(RunContext(job_name="m", model_uri=arg["model"], dataset_uri=arg["dataset"],
                                output_uri=arg["output"]))
else:  # as cmp merges: one table file at a time, spilled
    with tempfile.TemporaryDirectory() as spill:
        merge = MatchesMerge({"categories": [{"id": 1, "name": "pedestrian"}]}, Path(spill))
        for p in arg:
            merge.add(coco_tables.read(p)[0])
        report = merge.report()
seconds = time.perf_counter() - t1
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "import_s": t1 - t0, "rss_mb": int(hwm.split()[1]) / 1024,
                  "stats": {k: report.full[f"{k}/stats"] for k in report.full["iou_types"]}}))
"""


def _child(mode: str, arg) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, json.dumps(arg)], capture_output=True, text=True,
                         cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(work: Path, real_sizes=(5_000, 10_000, 100_000), table_sizes=(1_000_000,), peer_budget_s: float = 200.0,
        ppl_s_per_image: float | None = None) -> tuple[list[Row], dict]:
    rows, facts = [], {}
    peers = [p for p in ("pycocotools", "faster-coco-eval", "hotcoco") if _installed(p)]
    per_image_s: dict[str, float] = {}
    for n in real_sizes:
        records = synthesise(n)
        dets = sum(len(p["scores"]) for _, _, p in records)
        uris, matching_s = write_job(work / f"scale-{n}", records, max(1, n // 1000))
        got = _child("cmp", uris)
        facts[n] = {"cmp": got, "matching_s": matching_s, "peers": {}}
        gt_dict, results = coco_dicts(records)
        del records
        timing = [f"assay cmp {got['seconds']:.2f}s (+{got['import_s']:.1f}s imports)"]
        for name in peers:
            if name in per_image_s and per_image_s[name] * n > peer_budget_s:
                timing.append(f"{name} ~{per_image_s[name] * n:.0f}s (extrapolated, not run)")
                continue
            seconds, stats = _peer(name, gt_dict, results)
            per_image_s[name] = seconds / n
            diff = max(abs(a - b) for k in stats for a, b in zip(stats[k], got["stats"][k], strict=True))
            facts[n]["peers"][name] = {"seconds": seconds, "max_diff": diff}
            timing.append(f"{name} {seconds:.2f}s (max |diff| {diff:.1g})")
        fastest = min((v["seconds"] for v in facts[n]["peers"].values()), default=None)
        goal = "< 30 s" if n >= 100_000 else "<= the fastest peer"
        met = got["seconds"] < 30 if n >= 100_000 else (fastest is not None and got["seconds"] <= fastest)
        rows.append(Row(f"22 cmp at {n:,} images (bbox+segm)", "cmp wall s, from match tables", got["seconds"],
                        goal, met, f"{dets:,} detections; peak RSS {got['rss_mb']:.0f} MB; " + "; ".join(timing)))
        match_ms = 1000 * matching_s / n
        share = None if ppl_s_per_image is None else matching_s / n / ppl_s_per_image
        rows.append(Row(f"22 ppl matching at {n:,} images", "ms per image (bbox+segm)", match_ms,
                        "<= 5% of ppl time", None if share is None else share <= 0.05,
                        "share of ppl time: " + ("n/a (ppl not measured in this run)" if share is None else
                                                 f"{100 * share:.2f}% of {ppl_s_per_image:.3f} s/image")))
    for n in table_sizes:
        folder = work / f"tables-{n}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = synthetic_tables(folder, n, max(1, n // 10_000))
        got = _child("merge", [str(p) for p in paths])
        facts[n] = {"merge": got}
        extrapolated = "; ".join(f"{name} ~{per_image_s[name] * n:.0f}s" for name in per_image_s)
        extrapolated += " (extrapolated, linearly, from the largest size each ran, bbox+segm)" if extrapolated else ""
        rows.append(Row(f"22 cmp at {n:,} images (bbox, tables generated)", "merge+accumulate wall s",
                        got["seconds"], "< 60 s and < 4 GB", got["seconds"] < 60 and got["rss_mb"] < 4096,
                        f"{n * DETS_PER_IMAGE:,} detections in {len(paths)} table files; peak RSS "
                        f"{got['rss_mb']:.0f} MB (+{got['import_s']:.1f}s imports); "
                        f"{extrapolated or 'no peer measured'}"))
    return rows, facts
