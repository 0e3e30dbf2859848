"""The standard built-in sources (process: coco, imagefolder, yolo) on real-format files written here.

The COCO and YOLO files are written from PennFudanPed's masks (the 17-image test split), so the coco
source is checked against the pennfudan source: same labels, same metrics for the same predictions.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

from assay import datasets, shards
from assay.errors import SpecError
from assay.metrics import get_evaluator
from assay.metrics.coco import STAT_NAMES
from assay.shards import load_manifest, read_labels
from assay.sources import pennfudan
from tests.conftest import REPO

SPLIT = "PNGImages/*6.png"


# --- writing the fixtures -------------------------------------------------------------------------------

def _yaml(folder: Path, process: str, data_filter: str, label_filter: str | None = None, name: str = "std") -> Path:
    lines = [f"name: {name}", "data_dir: .", f"data_filter: '{data_filter}'", f"process: {process}"]
    if label_filter:
        lines.append(f"label_filter: '{label_filter}'")
    (folder / "dataset.yaml").write_text("\n".join(lines) + "\n")
    return folder / "dataset.yaml"


def _uncompressed(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of a binary mask (column-major runs, starting with zeros)."""
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return ([0] + runs) if flat[0] else runs


def _split_names(pennfudan_dir: Path) -> list[str]:
    return [p.stem for p in sorted(pennfudan_dir.glob(SPLIT))]


def write_coco(pennfudan_dir: Path, folder: Path, polygons: bool = False) -> Path:
    """A COCO instances JSON of the test split from its masks, beside a link to PNGImages (no copy).

    Image ids follow the sorted file names. Objects alternate compressed and uncompressed RLE (both
    exact); with ``polygons``, every third object is its bounding quadrilateral as a polygon instead.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "PNGImages").symlink_to(pennfudan_dir / "PNGImages")
    images, annotations = [], []
    for image_id, name in enumerate(_split_names(pennfudan_dir), start=1):
        mask_png = (pennfudan_dir / "PedMasks" / f"{name}_mask.png").read_bytes()
        label = pennfudan.read_label(mask_png)
        images.append({"id": image_id, "file_name": f"{name}.png", "width": label["width"],
                       "height": label["height"]})
        for obj in label["objects"]:
            ann_id = len(annotations) + 1
            segm = obj["segmentation"]
            if ann_id % 2 == 0:
                rle = {"size": segm["size"], "counts": segm["counts"].encode("ascii")}
                segm = {"size": segm["size"], "counts": _uncompressed(mask_util.decode(rle))}
            if polygons and ann_id % 3 == 0:
                x, y, w, h = obj["bbox"]
                segm = [[x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h, x, y + h / 2]]
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": obj["bbox"],
                                "area": obj["area"], "iscrowd": 0, "segmentation": segm})
    (folder / "annotations").mkdir()
    doc = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "pedestrian"}]}
    (folder / "annotations" / "instances.json").write_text(json.dumps(doc))
    return _yaml(folder, "coco", SPLIT, "annotations/instances.json", name="coco-ped")


def cli(*args: str) -> subprocess.CompletedProcess:
    """``assay ARGS`` in a child process, importing this checkout's assay."""
    path = os.pathsep.join([str(REPO / "runner"), str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "assay.cli.main", *args], check=False, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": path}, timeout=300)


def cli_build(config: Path, store: str) -> dict:
    out = cli("dataset", "build", str(config), "--store", store, "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def labels_of(uri: str) -> tuple[dict, list[dict]]:
    manifest = load_manifest(uri)
    return manifest.label_schema, [r for i in range(len(manifest.shards)) for r in read_labels(manifest, i)]


def predictions_from_masks(pennfudan_dir: Path, name: str) -> dict:
    """A deterministic, imperfect model: instances from the mask, shifted, one missed in some images."""
    from PIL import Image

    mask = np.asarray(Image.open(pennfudan_dir / "PedMasks" / f"{name}_mask.png"))
    ids = [i for i in np.unique(mask) if i != 0]
    if len(ids) > 1 and zlib.crc32(name.encode()) % 3 == 0:
        ids = ids[:-1]
    shift = 1 + zlib.crc32(name.encode()) % 9
    masks = [np.roll(mask == i, shift, axis=1) for i in ids]
    boxes = []
    for m in masks:
        ys, xs = np.where(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
            "scores": np.linspace(1.0, 0.5, len(ids)), "labels": np.ones(len(ids), np.int64),
            "masks": [mask_util.encode(np.asfortranarray(m, dtype=np.uint8)) for m in masks]}


def score(schema: dict, records: list[dict], predictions: dict) -> dict:
    evaluator = get_evaluator("coco", schema)
    for r in records:
        evaluator.update(r["id"], r["label"], predictions[r["id"]])
    return evaluator.compute().summary


# --- coco ------------------------------------------------------------------------------------------------

class TestCoco:
    def test_same_labels_and_metrics_as_the_pennfudan_source(self, pennfudan_dir, test_split, tmp_path):
        built = cli_build(write_coco(pennfudan_dir, tmp_path / "coco"), str(tmp_path / "store"))
        assert built["samples"] == 17
        coco_schema, coco = labels_of(built["uri"])
        ped_schema, ped = labels_of(test_split.uri)
        assert coco_schema == {"task": "detection", "categories": [{"id": 1, "name": "pedestrian"}]}
        names = _split_names(pennfudan_dir)
        assert [r["id"] for r in coco] == [str(i) for i in range(1, 18)]  # COCO image ids, in order
        assert [r["id"] for r in ped] == names
        for c, p in zip(coco, ped, strict=True):
            assert (c["label"]["width"], c["label"]["height"]) == (p["label"]["width"], p["label"]["height"])
            for co, po in zip(c["label"]["objects"], p["label"]["objects"], strict=True):
                assert {k: co[k] for k in ("bbox", "area", "iscrowd", "segmentation", "category_id")} == \
                       {k: po[k] for k in ("bbox", "area", "iscrowd", "segmentation", "category_id")}
        by_name = {n: predictions_from_masks(pennfudan_dir, n) for n in names}
        ped_scores = score(ped_schema, ped, by_name)
        coco_scores = score(coco_schema, coco, {str(i): by_name[n] for i, n in enumerate(names, start=1)})
        keys = [f"{t}/{s}" for t in ("bbox", "segm") for s in STAT_NAMES]
        print("pennfudan", {k: round(ped_scores[k], 4) for k in keys})
        print("coco     ", {k: round(coco_scores[k], 4) for k in keys})
        assert [coco_scores[k] for k in keys] == [ped_scores[k] for k in keys]
        assert 0.3 < ped_scores["bbox/AP"] < 1.0 and 0.3 < ped_scores["segm/AP"] < 1.0  # imperfect, not empty

    def test_polygons_become_pycocotools_own_rle(self, pennfudan_dir, tmp_path):
        from pycocotools.coco import COCO

        config = write_coco(pennfudan_dir, tmp_path / "coco", polygons=True)
        m = datasets.build(datasets.load_config(config), str(tmp_path / "store"), log=lambda s: None)
        _, records = labels_of(m.uri)
        with contextlib.redirect_stdout(io.StringIO()):
            reference = COCO(str(tmp_path / "coco" / "annotations" / "instances.json"))
        polygons = 0
        for r in records:
            for obj in r["label"]["objects"]:
                ann = reference.anns[obj["id"]]
                polygons += isinstance(ann["segmentation"], list)
                want = reference.annToRLE(ann)
                counts = want["counts"].decode() if isinstance(want["counts"], bytes) else want["counts"]
                assert obj["segmentation"] == {"size": list(want["size"]), "counts": counts}
        assert polygons >= 5
        # the built dataset runs through ppl and cmp: its ground truth as predictions scores exactly 1
        from assay.check import check
        from assay.runner.local import evaluate

        assert check(m.uri, evaluate).scores == {"bbox/AP": 1.0, "segm/AP": 1.0}

    def test_images_without_annotations_and_unlisted_files(self, tmp_path):
        write_images(tmp_path, {"a.png": (20, 10), "b.jpg": (8, 6), "extra.png": (4, 4)})
        doc = _coco_doc()
        doc["images"].append({"id": 3, "file_name": "b.jpg", "width": 8, "height": 6})
        source = _source(tmp_path, doc)
        samples = list(source)
        assert [s.id for s in samples] == ["1", "3"]  # extra.png is not in the JSON: ignored
        assert list(samples[1].files) == ["jpg"] and samples[1].label == {"width": 8, "height": 6, "objects": []}
        obj = samples[0].label["objects"][0]
        assert obj["bbox"] == [2.0, 3.0, 4.0, 5.0] and obj["area"] == 20.0 and "segmentation" not in obj

    def test_compressed_rle_is_checked_before_pycocotools_decodes_it(self, tmp_path):
        write_images(tmp_path, {"a.png": (20, 10)})
        doc = _coco_doc()
        good = mask_util.encode(np.asfortranarray(np.ones((10, 20), np.uint8)))["counts"].decode()
        doc["annotations"][0]["segmentation"] = {"size": [10, 20], "counts": good}
        assert next(iter(_source(tmp_path, doc))).label["objects"][0]["segmentation"]["counts"] == good
        doc["annotations"][0]["segmentation"] = {"size": [10, 20], "counts": "0Z1000"}  # 0 + 1000+ pixels
        with pytest.raises(SpecError, match=re.escape(f"{tmp_path / 'instances.json'}: annotation 7: bad "
                                                      "segmentation (RLE counts must be non-negative and add "
                                                      "up to height x width (200)")):
            list(_source(tmp_path, doc))

    @pytest.mark.parametrize("change, message", [
        (lambda d: d["annotations"][0].update(category_id=9), "annotation 7: category_id 9 is not in categories"),
        (lambda d: d["annotations"][0].update(image_id=5), "annotation 7: image_id 5 is not in images"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 4]),
         "annotation 7: bbox [1, 2, 0, 4] is not [x, y, w, h] with w, h > 0"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]]),
         "annotation 7: bad segmentation (a polygon must be a flat list"),
        (lambda d: d["annotations"][0].update(segmentation={"size": [10, 20], "counts": [5, 5]}),
         ("annotation 7: bad segmentation (RLE counts must be non-negative and add up to height x width (200), "
          "got 10)")),
        (lambda d: d["annotations"][0].pop("bbox"), "annotations[0] has no 'bbox'"),
        (lambda d: d["images"].append(dict(d["images"][0])), "images id 1 occurs twice"),
        (lambda d: d["categories"].append({"id": 2, "name": "pedestrian"}), "category name 'pedestrian' occurs twice"),
        (lambda d: d.pop("annotations"), "no 'annotations' list"),
        (lambda d: d["images"][0].update(width=21), "image 1 is 21x10 in the JSON but {a} is 20x10"),
        (lambda d: d["images"][0].update(file_name="missing.png"),
         "image 1: file 'missing.png' is not among the images data_filter selects under {dir}"),
    ])
    def test_errors_name_the_json_and_the_entry(self, tmp_path, change, message):
        write_images(tmp_path, {"a.png": (20, 10)})
        doc = _coco_doc()
        change(doc)
        expected = f"{tmp_path / 'instances.json'}: " + message.format(a=tmp_path / "a.png", dir=tmp_path)
        with pytest.raises(SpecError, match=re.escape(expected)):
            list(_source(tmp_path, doc))

    def test_malformed_json_fails_the_cli_naming_the_file(self, tmp_path):
        write_images(tmp_path, {"a.png": (20, 10)})
        (tmp_path / "instances.json").write_text('{"images": [}')
        config = _yaml(tmp_path, "coco", "*.png", "instances.json")
        out = cli("dataset", "build", str(config), "--store", str(tmp_path / "store"))
        assert out.returncode != 0
        assert f"{tmp_path / 'instances.json'}: not valid JSON (Expecting value: line 1 column 13" in out.stderr


def write_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> None:
    from PIL import Image

    for rel, (w, h) in sizes.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 99, np.uint8)).save(folder / rel)


def _coco_doc() -> dict:
    return {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5], "area": 20}],
            "categories": [{"id": 1, "name": "pedestrian"}]}


def _source(folder: Path, doc: dict):
    (folder / "instances.json").write_text(json.dumps(doc))
    return datasets.load_source(datasets.load_config(_yaml(folder, "coco", "*.*g", "instances.json")))


# --- imagefolder -----------------------------------------------------------------------------------------

class TestImageFolder:
    def test_digits_build_with_sorted_classes_and_their_labels(self, tmp_path):
        from PIL import Image
        from sklearn.datasets import load_digits

        digits = load_digits()
        root = tmp_path / "digits"
        names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        for i in range(150):
            (root / names[digits.target[i]]).mkdir(parents=True, exist_ok=True)
            image = (digits.images[i] * 16).clip(0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / names[digits.target[i]] / f"{i:04d}.png")
        m = cli_build(_yaml(root, "imagefolder", "*/*.png", name="digits"), str(tmp_path / "store"))
        schema, records = labels_of(m["uri"])
        classes = sorted(names)
        assert schema == {"task": "classification", "classes": classes}
        assert m["samples"] == len(records) == 150
        assert [r["id"] for r in records] == sorted(f"{names[digits.target[i]]}/{i:04d}" for i in range(150))
        for r in records:
            cls, number = r["id"].split("/")
            assert r["label"] == {"label": classes.index(cls)}
            assert names[digits.target[int(number)]] == cls
        counts = np.bincount([r["label"]["label"] for r in records], minlength=10)
        assert counts.tolist() == [int((digits.target[:150] == names.index(c)).sum()) for c in classes]

    def test_empty_class_folder_is_refused(self, tmp_path):
        write_images(tmp_path, {"cat/a.png": (4, 4)})
        (tmp_path / "dog").mkdir()
        with pytest.raises(SpecError, match=re.escape(f"class folder {tmp_path / 'dog'} holds no image that "
                                                      "data_filter selects")):
            datasets.load_source(datasets.load_config(_yaml(tmp_path, "imagefolder", "*/*.png")))

    def test_unreadable_image_is_named(self, tmp_path):
        write_images(tmp_path, {"cat/a.png": (4, 4)})
        (tmp_path / "dog").mkdir()
        (tmp_path / "dog" / "b.png").write_bytes(b"not an image")
        config = datasets.load_config(_yaml(tmp_path, "imagefolder", "*/*.png"))
        with pytest.raises(SpecError, match=re.escape(f"{tmp_path / 'dog' / 'b.png'}: not a readable image (12 bytes")):
            datasets.build(config, str(tmp_path / "store"), log=lambda s: None)

    def test_phone_camera_mpo_jpegs_are_jpegs(self, tmp_path):
        """Phone cameras write MPO: a JPEG with more pictures after it. It is kept as it is, as a jpg."""
        from PIL import Image

        (tmp_path / "cat").mkdir()
        first, second = Image.new("RGB", (8, 6), (200, 10, 10)), Image.new("RGB", (8, 6), (10, 10, 200))
        first.save(tmp_path / "cat" / "IMG_0001.jpg", "MPO", save_all=True, append_images=[second])
        assert Image.open(tmp_path / "cat" / "IMG_0001.jpg").format == "MPO"
        ds = datasets.build(datasets.load_config(_yaml(tmp_path, "imagefolder", "*/*.jpg")), str(tmp_path / "store"),
                            log=lambda s: None)
        with shards.fetch_shard(ds, 0) as path:
            [sample] = list(shards.iter_shard_samples(path, ds.shard_uri(0)))
        assert sample.image() == ("jpg", (tmp_path / "cat" / "IMG_0001.jpg").read_bytes())

    def test_image_outside_a_class_folder_is_refused(self, tmp_path):
        write_images(tmp_path, {"cat/a.png": (4, 4), "loose.png": (4, 4)})
        with pytest.raises(SpecError, match=re.escape(f"{tmp_path / 'loose.png'} is not inside a class folder")):
            datasets.load_source(datasets.load_config(_yaml(tmp_path, "imagefolder", "**/*.png")))


# --- yolo ------------------------------------------------------------------------------------------------

class TestYolo:
    def test_boxes_from_pennfudan_convert_back_to_pixels(self, pennfudan_dir, tmp_path):
        root = tmp_path / "yolo"
        (root / "images").mkdir(parents=True)
        (root / "images" / "val").symlink_to(pennfudan_dir / "PNGImages")
        (root / "labels" / "val").mkdir(parents=True)
        (root / "data.yaml").write_text("path: .\nval: images/val\nnames: {0: pedestrian, 1: bicycle}\n")
        want = {}
        for name in _split_names(pennfudan_dir):
            label = pennfudan.read_label((pennfudan_dir / "PedMasks" / f"{name}_mask.png").read_bytes())
            W, H = label["width"], label["height"]
            lines = [f"0 {(x + w / 2) / W:.9f} {(y + h / 2) / H:.9f} {w / W:.9f} {h / H:.9f}"
                     for x, y, w, h in (o["bbox"] for o in label["objects"])]
            (root / "labels" / "val" / f"{name}.txt").write_text("\n".join(lines) + "\n")
            want[f"val/{name}"] = label
        m = cli_build(_yaml(root, "yolo", "images/val/*6.png", "data.yaml", name="yolo-ped"), str(tmp_path / "s"))
        schema, records = labels_of(m["uri"])
        assert schema["categories"] == [{"id": 1, "name": "pedestrian"}, {"id": 2, "name": "bicycle"}]
        assert [r["id"] for r in records] == sorted(want)
        for r in records:
            got, expected = r["label"]["objects"], want[r["id"]]["objects"]
            assert len(got) == len(expected) > 0
            for g, e in zip(got, expected, strict=True):
                assert g["category_id"] == 1 and g["iscrowd"] == 0 and "segmentation" not in g
                np.testing.assert_allclose(g["bbox"], e["bbox"], atol=1e-5)
                assert g["area"] == pytest.approx(e["bbox"][2] * e["bbox"][3], abs=1e-3)

    def test_polygon_lines_become_masks(self, tmp_path):
        write_images(tmp_path, {"images/a.png": (40, 20)})
        (tmp_path / "classes.txt").write_text("thing\n")
        (tmp_path / "labels").mkdir()
        (tmp_path / "labels" / "a.txt").write_text("0 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n")
        sample = next(iter(datasets.load_source(datasets.load_config(
            _yaml(tmp_path, "yolo", "images/*.png", "classes.txt")))))
        obj = sample.label["objects"][0]
        assert sample.id == "a" and obj["bbox"] == [10.0, 5.0, 20.0, 10.0]
        want = mask_util.merge(mask_util.frPyObjects([[10.0, 5.0, 30.0, 5.0, 30.0, 15.0, 10.0, 15.0]], 20, 40))
        assert obj["segmentation"] == {"size": [20, 40], "counts": want["counts"].decode()}
        assert obj["area"] == float(mask_util.area(want))

    @pytest.mark.parametrize("line, message", [
        ("3 0.5 0.5 0.1 0.1", "class 3 is not an index 0..1 of the class names"),
        ("0 0.5 0.5 1.2 0.1", "coordinates must be normalised to 0..1"),
        ("0 0.5 0.5 0.1", "3 coordinates: a box has 4, a polygon an even number, at least 6"),
        ("person 0.5 0.5 0.1 0.1", "'person 0.5 0.5 0.1 0.1' is not all numbers"),
        ("0 0.5 0.5 0 0.1", "box width and height must be > 0"),
    ])
    def test_bad_lines_are_named_by_file_and_line(self, tmp_path, line, message):
        write_images(tmp_path, {"images/a.png": (4, 4)})
        (tmp_path / "data.yaml").write_text("names: [person, car]\n")
        (tmp_path / "labels").mkdir()
        (tmp_path / "labels" / "a.txt").write_text(f"0 0.5 0.5 0.2 0.2\n\n{line}\n")
        with pytest.raises(SpecError, match=re.escape(f"{tmp_path / 'labels' / 'a.txt'} line 3: {message}")):
            datasets.load_source(datasets.load_config(_yaml(tmp_path, "yolo", "images/*.png", "data.yaml")))

    def test_a_layout_without_any_label_file_is_refused(self, tmp_path):
        write_images(tmp_path, {"images/a.png": (4, 4)})
        (tmp_path / "data.yaml").write_text("names: [person]\n")
        with pytest.raises(SpecError, match=re.escape(f"no selected image under {tmp_path} has a label file "
                                                      f"(looked for e.g. {tmp_path / 'labels' / 'a.txt'})")):
            datasets.load_source(datasets.load_config(_yaml(tmp_path, "yolo", "images/*.png", "data.yaml")))
