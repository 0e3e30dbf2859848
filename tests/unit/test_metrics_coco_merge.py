"""Match tables merged from shards give exactly pycocotools' whole-set COCOeval (max |diff| = 0).

Every comparison is exact: the 12 stats of bbox and segm, and COCOeval's full ``precision`` and
``recall`` arrays (the stored PR curves are slices of them). The data is random with the cases that
break a naive merge mixed in: tied scores within an image and across shards, objects exactly at 32²
and 96², crowd ground truth, empty images, detections without ground truth, a category without ground
truth, more than 100 detections of one image and category, a ground-truth annotation id 0, shards
merged in any order, and one shard against many.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from assay.metrics import coco_match
from assay.metrics.coco_match import MatchTable

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 4, "name": "c"},
              {"id": 7, "name": "no-ground-truth"}]
TIED_SCORES = (0.9, 0.5, 0.5000001, 0.25)


def _rect_rle(h: int, w: int, x: int, y: int, bw: int, bh: int) -> dict[str, Any]:
    m = np.zeros((h, w), np.uint8, order="F")
    m[y:y + bh, x:x + bw] = 1
    return mask_utils.encode(m)


def _box(rng, w: int, h: int) -> tuple[int, int, int, int]:
    """Mostly random boxes; a share exactly 32x32 or 96x96 (COCO's area-range bounds)."""
    kind = rng.integers(0, 4)
    bw = bh = (32, 96)[kind] if kind < 2 else None
    if bw is None:
        bw, bh = int(rng.integers(1, w)), int(rng.integers(1, h))
    bw, bh = min(bw, w), min(bh, h)
    return int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1)), bw, bh


def _dataset(seed: int, n_images: int) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """Images, ground truth, bbox results and segm results (the same detections as boxes and masks)."""
    rng = np.random.default_rng(seed)
    images, gts, box_dets, mask_dets = [], [], [], []
    gt_id = int(rng.integers(0, 2))  # 0: the first annotation has id 0 (dtMatches 0 reads as unmatched)
    crowd_share = rng.choice([0.0, 0.3])
    tied = rng.random() < 0.5
    many = int(rng.integers(0, n_images)) if rng.random() < 0.3 else -1
    for i in range(n_images):
        w, h = int(rng.integers(100, 160)), int(rng.integers(100, 160))
        image_id = i + 1  # assay's image id: sample position + 1
        images.append({"id": image_id, "width": w, "height": h})
        kind = rng.integers(0, 6)  # 0: empty image, 1: detections only, else both
        objects = []
        for _ in range(0 if kind < 2 else int(rng.integers(1, 5))):
            x, y, bw, bh = _box(rng, w, h)
            rle = _rect_rle(h, w, x, y, bw, bh)
            area = float(bw * bh) if rng.random() < 0.7 else float(rng.integers(900, 10000))
            objects.append((x, y, bw, bh))
            gts.append({"id": gt_id, "image_id": image_id, "category_id": int(rng.choice([1, 2, 4])),
                        "bbox": [float(x), float(y), float(bw), float(bh)], "area": area,
                        "iscrowd": int(rng.random() < crowd_share), "segmentation": rle})
            gt_id += 1
        n_det = 0 if kind == 0 else int(rng.integers(0, 12))
        if i == many:
            n_det = 130
        for _ in range(n_det):
            if objects and rng.random() < 0.6:  # near an object: a likely match
                x, y, bw, bh = objects[int(rng.integers(0, len(objects)))]
                dx, dy = (int(v) for v in rng.integers(-4, 5, 2))
                x, y = min(max(x + dx, 0), w - bw), min(max(y + dy, 0), h - bh)
            else:
                x, y, bw, bh = _box(rng, w, h)
            score = float(rng.choice(TIED_SCORES)) if tied or rng.random() < 0.2 else float(
                np.float32(rng.random()))
            cat = 1 if i == many else int(rng.choice([1, 2, 4, 7]))
            common = {"image_id": image_id, "category_id": cat, "score": score}
            box_dets.append({**common, "bbox": [float(x), float(y), float(bw), float(bh)]})
            mask_dets.append({**common, "segmentation": _rect_rle(h, w, x, y, bw, bh)})
    return images, gts, box_dets, mask_dets


def _coco(images: list[dict], anns: list[dict]) -> COCO:
    gt = COCO()
    gt.dataset = {"images": [dict(i) for i in images], "categories": [dict(c) for c in CATEGORIES],
                  "annotations": [dict(a) for a in anns]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _results(gt: COCO, dets: list[dict]) -> COCO:
    if not dets:  # loadRes refuses an empty list
        return _coco(gt.dataset["images"], [])
    with contextlib.redirect_stdout(io.StringIO()):
        return gt.loadRes([dict(d) for d in dets])


def _reference(images, gts, dets, iou_type: str) -> tuple[list[float], np.ndarray, np.ndarray]:
    gt = _coco(images, gts)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, _results(gt, dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats], ev.eval["precision"], ev.eval["recall"]


def _shard_tables(images, gts, dets, iou_type: str, bounds: list[int]) -> list[MatchTable]:
    """One table per shard of consecutive images, as the ppl workers write them."""
    tables = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        ids = {im["id"] for im in images[lo:hi]}
        gt = _coco(images[lo:hi], [a for a in gts if a["image_id"] in ids])
        tables.append(coco_match.match(gt, _results(gt, [d for d in dets if d["image_id"] in ids]), iou_type))
    return tables


def _merged(tables: list[MatchTable], iou_type: str) -> tuple[list[float], np.ndarray, np.ndarray]:
    table = MatchTable.concat(tables)
    table.check()
    precision, recall = coco_match.accumulate(table, len(CATEGORIES))
    return coco_match.summarize(precision, recall, iou_type), precision, recall


def _assert_exact(got, ref) -> None:
    for g, r, what in zip(got, ref, ("stats", "precision", "recall"), strict=True):
        g, r = np.asarray(g), np.asarray(r)
        assert g.shape == r.shape, what
        assert np.array_equal(g, r), f"{what}: max |diff| {np.abs(g - r).max()}"


def _check(seed: int, n_images: int, cuts: list[int], order_seed: int) -> None:
    images, gts, box_dets, mask_dets = _dataset(seed, n_images)
    bounds = sorted({0, n_images, *[c % (n_images + 1) for c in cuts]})
    for iou_type, dets in (("bbox", box_dets), ("segm", mask_dets)):
        ref = _reference(images, gts, dets, iou_type)
        tables = _shard_tables(images, gts, dets, iou_type, bounds)
        np.random.default_rng(order_seed).shuffle(tables)  # shards finish, and are merged, in any order
        _assert_exact(_merged(tables, iou_type), ref)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), n_images=st.integers(1, 24),
       cuts=st.lists(st.integers(0, 100), max_size=6), order_seed=st.integers(0, 1000))
def test_merged_shards_equal_pycocotools_exactly(seed, n_images, cuts, order_seed):
    _check(seed, n_images, cuts, order_seed)


@pytest.mark.parametrize("seed", range(6))
def test_one_shard_and_one_per_image_equal_pycocotools_exactly(seed):
    _check(seed, 30, [], 0)
    _check(seed, 30, list(range(30)), seed)


def test_ties_across_shards_keep_global_image_order():
    """Equal scores in different shards: COCOeval ranks them by image order, whichever shard ends first."""
    images = [{"id": i + 1, "width": 100, "height": 100} for i in range(4)]
    gts = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 40.0], "area": 1600.0,
            "iscrowd": 0} for i in (0, 2)]
    # two hits (images 1 and 3) and two misses (images 2 and 4), all with one score: order decides AP
    dets = [{"image_id": i + 1, "category_id": 1, "score": 0.5,
             "bbox": [10.0, 10.0, 40.0, 40.0] if i in (0, 2) else [60.0, 60.0, 30.0, 30.0]} for i in range(4)]
    ref = _reference(images, gts, dets, "bbox")
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        tables = _shard_tables(images, gts, dets, "bbox", [0, 1, 2, 3, 4])
        _assert_exact(_merged([tables[i] for i in order], "bbox"), ref)


def test_more_than_100_detections_per_image_and_category():
    images, gts, box_dets, _ = _dataset(3, 5)
    extra = [{"image_id": 2, "category_id": 1, "score": float(s), "bbox": [float(s * 50), 5.0, 30.0, 30.0]}
             for s in np.linspace(0.01, 0.99, 150)]
    ref = _reference(images, gts, box_dets + extra, "bbox")
    tables = _shard_tables(images, gts, box_dets + extra, "bbox", [0, 2, 5])
    assert max(t.num_dets.max() for t in tables) == coco_match.MAX_DETS[-1]
    _assert_exact(_merged(tables[::-1], "bbox"), ref)


def test_image_aps_equal_per_image_cocoeval():
    """The per-sample score from the table equals the one from COCOeval's evalImgs at IoU 0.50, area all."""
    images, gts, box_dets, _ = _dataset(11, 20)
    gt = _coco(images, gts)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, _results(gt, box_dets), "bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]
        ev.evaluate()
    expected: list[list[float]] = [[] for _ in images]
    for e in ev.evalImgs:
        if e is None:
            continue
        keep = ~np.asarray(e["dtIgnore"], dtype=bool)[0]
        ap = coco_match.image_ap(int((~np.asarray(e["gtIgnore"], dtype=bool)).sum()),
                                  (np.asarray(e["dtMatches"])[0] > 0)[keep], np.asarray(e["dtScores"])[keep])
        if ap is not None:
            expected[e["image_id"] - 1].append(ap)
    table = MatchTable.concat(_shard_tables(images, gts, box_dets, "bbox", [0, 7, 20]))
    got = coco_match.image_aps(table, len(images))
    assert [sorted(x) for x in got] == [sorted(x) for x in expected]
    assert any(0 < ap < 1 for aps in got for ap in aps)  # not only trivial scores


def test_damaged_table_is_refused():
    images, gts, box_dets, _ = _dataset(5, 6)
    table = _shard_tables(images, gts, box_dets, "bbox", [0, 6])[0]
    bad = MatchTable(*(getattr(table, c) if c != "score" else table.score[:-1] for c in MatchTable.COLUMNS))
    with pytest.raises(ValueError, match="detection columns"):
        bad.check()


def _check_bounded(seed: int, n_images: int, cuts: list[int], order_seed: int, budget: int, sparse: int) -> None:
    """As ``_check``, with each shard a run of ``coco_merge.Runs`` read back ``budget`` detections at a time."""
    import tempfile

    from assay.metrics import coco_merge

    images, gts, box_dets, mask_dets = _dataset(seed, n_images)
    bounds = sorted({0, n_images, *[c % (n_images + 1) for c in cuts]})
    for iou_type, dets in (("bbox", box_dets), ("segm", mask_dets)):
        ref = _reference(images, gts, dets, iou_type)
        tables = _shard_tables(images, gts, dets, iou_type, bounds)
        np.random.default_rng(order_seed).shuffle(tables)
        with tempfile.TemporaryDirectory() as folder:
            runs = coco_merge.Runs(folder, len(CATEGORIES), budget=budget, sparse=sparse)
            for table in tables:
                runs.add(table)
            precision, recall = runs.accumulate()
        _assert_exact((coco_match.summarize(precision, recall, iou_type), precision, recall), ref)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), n_images=st.integers(1, 24),
       cuts=st.lists(st.integers(0, 100), max_size=6), order_seed=st.integers(0, 1000),
       budget=st.integers(1, 40), sparse=st.integers(1, 9))
def test_bounded_merge_equals_pycocotools_exactly(seed, n_images, cuts, order_seed, budget, sparse):
    """Score ranges split down to one detection, ranges of one tied score streamed run by run, index
    windows of every size: still COCOeval's arrays to the bit."""
    _check_bounded(seed, n_images, cuts, order_seed, budget, sparse)


@pytest.mark.parametrize("seed", range(4))
def test_bounded_merge_of_one_run_per_image_with_ties(seed):
    _check_bounded(seed, 30, list(range(30)), seed, budget=3, sparse=2)


def test_bounded_merge_refuses_shards_that_overlap():
    from assay.metrics import coco_merge

    images, gts, box_dets, _ = _dataset(1, 6)
    table = _shard_tables(images, gts, box_dets, "bbox", [0, 6])[0]
    runs = coco_merge.Runs(__import__("tempfile").mkdtemp(), len(CATEGORIES))
    runs.add(table)
    runs.add(table)
    with pytest.raises(ValueError, match="same images"):
        runs.accumulate()
