"""Deterministic bad input met at build and run time, through the CLI as a user meets it: each case ends
with a one-line `error:` and a `hint:`, exit code 3 (never a traceback or the retryable 1), and leaves
nothing half-written (no dataset or model version, no results, no metrics). Problems that can be known
before inference (labels, masks, the handler module, the evaluator) are refused before it."""

from __future__ import annotations

import shutil
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from PIL import Image

from assay.cli.main import main as cli
from assay.errors import EXIT_PERMANENT
from tests.conftest import FIXTURES, job_manifest

NAMES = ["FudanPed00016", "PennPed00016"]


def mini_pennfudan(root: Path, src: Path) -> Path:
    data = root / "data"
    for sub in ("PNGImages", "PedMasks"):
        (data / sub).mkdir(parents=True)
    for n in NAMES:
        shutil.copy(src / "PNGImages" / f"{n}.png", data / "PNGImages")
        shutil.copy(src / "PedMasks" / f"{n}_mask.png", data / "PedMasks")
    return data


def dataset_yaml(root: Path, data: Path, **extra) -> Path:
    doc = {"name": "mini", "data_dir": str(data), "data_filter": "PNGImages/*.png",
           "label_filter": "PedMasks/*_mask.png", "process": "pennfudan", **extra}
    path = root / "dataset.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb for any reader that trusts it)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _mask(data: Path) -> Path:
    return data / "PedMasks" / f"{NAMES[0]}_mask.png"


def _jpeg_mask(root, data):
    Image.open(_mask(data)).convert("L").save(_mask(data), format="JPEG")  # a JPEG named .png
    return dataset_yaml(root, data)


def _resized_mask(root, data):
    img = Image.open(_mask(data))
    img.resize((img.width // 2, img.height // 2), Image.NEAREST).save(_mask(data))
    return dataset_yaml(root, data)


def _empty_image(root, data):
    (data / "PNGImages" / f"{NAMES[1]}.png").write_bytes(b"")
    return dataset_yaml(root, data)


def _bomb_image(root, data):
    (data / "PNGImages" / f"{NAMES[1]}.png").write_bytes(png_header_only(20000, 20000))
    return dataset_yaml(root, data)


def _garbage_mask(root, data):
    _mask(data).write_bytes(b"not an image at all")
    return dataset_yaml(root, data)


SOURCE = """
import numpy as np
from assay.shards import Sample

class Src:
    label_schema = {{"task": "classification", "classes": ["a", "b"]}}
    def __init__(self, data_dir, data_files, label_files):
        self.files = data_files
    def __iter__(self):
        for i, f in enumerate(self.files):
            {body}
"""


def _source(body: str):
    def make(root, data):
        (root / "src.py").write_text(SOURCE.format(body=body))
        return dataset_yaml(root, data, process="src:Src")
    return make


def _source_schema(schema: str):
    def make(root, data):
        (root / "src.py").write_text(SOURCE.format(body="yield Sample(str(i), {'png': f.read_bytes()}, {'class': 1})")
                                     .replace('{"task": "classification", "classes": ["a", "b"]}', schema))
        return dataset_yaml(root, data, process="src:Src")
    return make


def _bytes_file(content: bytes, name: str = "dataset.yaml"):
    def make(root, data):
        (root / name).write_bytes(content)
        return root / name
    return make


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 8)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))

DATASET_CASES: list[tuple[str, Callable, str]] = [
    ("jpeg-coded mask", _jpeg_mask, "is JPEG data: instance masks must be lossless PNG"),
    ("mask and image sizes differ", _resized_mask, "but its image"),
    ("0-byte image", _empty_image, "not a readable image (0 bytes"),
    ("decompression bomb image", _bomb_image, "decompression bomb"),
    ("mask that is not an image", _garbage_mask, "is not PNG data"),
    ("source that raises", _source("raise KeyError('label column')"),
     "the dataset source 'src:Src' failed: KeyError('label column')"),
    ("numpy label", _source("yield Sample(str(i), {'png': f.read_bytes()}, {'class': np.int64(1)})"),
     "its label is not plain JSON"),
    ("NaN label", _source("yield Sample(str(i), {'png': f.read_bytes()}, {'class': 1, 'w': float('nan')})"),
     "its label is not plain JSON"),
    ("set label", _source("yield Sample(str(i), {'png': f.read_bytes()}, {'class': {1, 2}})"),
     "its label is not plain JSON"),
    ("absolute data_filter", lambda root, data: dataset_yaml(root, data, data_filter=f"{data}/PNGImages/*.png"),
     "must be relative to data_dir"),
    ("label_filter escaping data_dir", lambda root, data: dataset_yaml(root, data, label_filter="../x/*.png"),
     "must be relative to data_dir"),
    ("volume_size 0", lambda root, data: dataset_yaml(root, data, attr={"volume_size": "0"}),
     "is not a positive size"),
    ("volume_size 0 (a number)", lambda root, data: dataset_yaml(root, data, attr={"volume_size": 0}),
     "attr.volume_size 0 is not a positive size"),
    ("volume_size -5", lambda root, data: dataset_yaml(root, data, attr={"volume_size": -5}),
     "attr.volume_size -5 is not a positive size"),
    ("volume_size 1.5", lambda root, data: dataset_yaml(root, data, attr={"volume_size": 1.5}),
     "attr.volume_size 1.5 is not a size"),
    ("volume_size '1.5'", lambda root, data: dataset_yaml(root, data, attr={"volume_size": "1.5"}),
     "attr.volume_size '1.5' is not a positive size (a whole number of bytes)"),
    ("volume_size true", lambda root, data: dataset_yaml(root, data, attr={"volume_size": True}),
     "attr.volume_size True is not a size"),
    ("files value is text", _source("yield Sample(str(i), {'png': str(f)}, {'class': 1})"),
     "sample '0': files['png'] is a str, not bytes"),
    ("files is a list", _source("yield Sample(str(i), [f.read_bytes()], {'class': 1})"),
     "sample '0': files is a list, not a mapping"),
    ("label_schema is a list", _source_schema('["a", "b"]'),
     "the dataset source 'src:Src': label_schema is a list (['a', 'b']), not a mapping"),
    ("non-UTF-8 dataset.yaml", _bytes_file("name: caf\xe9\n".encode("latin-1")), "not UTF-8 text"),
    ("alias bomb dataset.yaml", _bytes_file(ALIAS_BOMB.encode()), "aliases expand to more than"),
    ("dataset.yaml is a folder", lambda root, data: root, "is a folder"),
    ("control character in dataset.yaml", _bytes_file(b"name: \x1f\n"), "not valid YAML"),
]


@pytest.mark.parametrize("case,make,message", DATASET_CASES, ids=[c[0] for c in DATASET_CASES])
def test_dataset_build_refuses(case, make, message, tmp_path, pennfudan_dir, capsys):
    data = mini_pennfudan(tmp_path, pennfudan_dir)
    config = make(tmp_path, data)
    store = tmp_path / "store"
    assert cli(["dataset", "build", str(config), "--store", str(store)]) == EXIT_PERMANENT
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err and "unexpected" not in err
    assert not list(store.glob("datasets/*/*/manifest.json")), "no dataset version is published"


def _model_dir(root: Path, handler: str = "handler:OracleHandler", code: list[str] | None = None,
               evaluator: str = "coco") -> Path:
    pkg = root / "pkg"
    shutil.copytree(FIXTURES / "oracle", pkg, dirs_exist_ok=True)
    (pkg / "model.yaml").write_text(yaml.safe_dump({"name": "m", "code": code or ["handler.py"],
                                                    "run": {"handler": handler, "evaluator": evaluator}}))
    return pkg / "model.yaml"


MODEL_CASES: list[tuple[str, Callable, str]] = [
    ("handler module not packaged", lambda root: _model_dir(root, handler="predictor:Model"),
     "the handler module 'predictor' (predictor.py) is not in the package"),
    ("handler module left out of code", lambda root: _model_dir(root, code=["*.txt"]),
     "the handler module 'handler' (handler.py) is not in the package"),
    ("non-UTF-8 model.yaml", lambda root: (root / "model.yaml").write_bytes(b"name: \xff\xfe\n") and root / "model.yaml",
     "not UTF-8 text"),
    ("model.yaml alias bomb", lambda root: (root / "model.yaml").write_text(ALIAS_BOMB) and root / "model.yaml",
     "aliases expand to more than"),
]


@pytest.mark.parametrize("case,make,message", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_model_build_refuses(case, make, message, tmp_path, capsys, monkeypatch):
    # as in a fresh `assay model build`: no model package that an earlier test ran in this process is
    # importable (a worker puts its unpacked package first on sys.path, and "handler" is a common name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not Path(p or ".", "handler.py").is_file()])
    monkeypatch.delitem(sys.modules, "handler", raising=False)
    config = make(tmp_path)
    store = tmp_path / "store"
    assert cli(["model", "build", str(config), "--store", str(store)]) == EXIT_PERMANENT
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err
    assert not list(store.glob("models/*/*/manifest.json")), "no model version is published"


# ----------------------------------------------------------------------------------------- assay run


@pytest.fixture(scope="module")
def built(tmp_path_factory, pennfudan_dir):
    """A small detection dataset, a classification dataset, and model packages good and broken."""
    from assay import datasets, packages

    root = tmp_path_factory.mktemp("built")
    store = str(root / "store")
    det = datasets.build(datasets.load_config(dataset_yaml(root, mini_pennfudan(root, pennfudan_dir))), store,
                         log=lambda s: None)
    (root / "cls").mkdir()
    (root / "cls" / "src.py").write_text(SOURCE.format(body="yield Sample(str(i), {'png': f.read_bytes()}, "
                                                           "{'class': i % 2})"))
    cls_yaml = dataset_yaml(root / "cls", root / "data", process="src:Src", name="cls")
    cls = datasets.build(datasets.load_config(cls_yaml), store, log=lambda s: None)
    models = {}
    for name, edit in {"good": None, "syntax": "def broken(:\n", "load": "LOAD_FAILS = True\n",
                       "exit": "import sys\nsys.exit(0)\n", "interrupt": "raise KeyboardInterrupt\n",
                       "osexit": "import os\nOracleHandler.predict = lambda self, batch: os._exit(0)\n"}.items():
        folder = root / f"model-{name}"
        pkg = _model_dir(folder)
        handler = pkg.parent / "handler.py"
        if edit == "LOAD_FAILS = True\n":
            handler.write_text(handler.read_text().replace("        global LOADS\n",
                                                           "        raise FileNotFoundError('weights.pt')\n"))
        elif edit:
            handler.write_text(handler.read_text() + edit)
        models[name] = packages.build(packages.load_config(pkg), store, log=lambda s: None).uri
    return {"root": root, "det": det.uri, "cls": cls.uri, **models}


def _job(built, folder: Path, model: str = "good", dataset: str = "det", output: str = "out", **spec) -> Path:
    doc = job_manifest("bad", built[model], built[dataset], output, workers=1)
    doc["spec"].update(spec)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _output_is_file(built, folder):
    (folder / "taken").write_text("a file")
    return _job(built, folder, output="taken")


RUN_CASES: list[tuple[str, Callable, str]] = [
    ("evaluator does not fit the labels", lambda b, f: _job(b, f, dataset="cls"),
     "evaluator 'coco' does not fit dataset cls"),
    ("classification evaluator on detection labels", lambda b, f: _job(b, f, evaluator="classification"),
     "evaluator 'classification' does not fit dataset mini"),
    ("no such model", lambda b, f: _job(dict(b, good=str(b["root"] / "store/models/none")), f),
     "no model package at"),
    ("no such dataset", lambda b, f: _job(dict(b, det=str(b["root"] / "store/datasets/none")), f),
     "no dataset at"),
    ("model URI names a dataset", lambda b, f: _job(dict(b, good=b["det"]), f), "not a valid model manifest"),
    ("output is a file", _output_is_file, "cannot create the job folder"),
    ("output path too long", lambda b, f: _job(b, f, output="o" * 300), "File name too long"),
    ("output below a file", lambda b, f: (f / "file").write_text("x") and _job(b, f, output="file/out"),
     "cannot create the job folder"),
    ("handler with a syntax error", lambda b, f: _job(b, f, model="syntax"), "cannot import handler"),
    ("output inside the dataset version folder", lambda b, f: _job(b, f, output=b["det"] + "/out"),
     "is inside the folder of dataset mini@"),
    ("output is the model version folder", lambda b, f: _job(b, f, output=b["good"]),
     "is inside the folder of model m@"),
    ("handler load() that raises", lambda b, f: _job(b, f, model="load"), "load() failed"),
    ("handler calling sys.exit at import", lambda b, f: _job(b, f, model="exit"),
     "cannot import handler 'handler:OracleHandler'"),
    ("handler predict() calling os._exit(0)", lambda b, f: _job(b, f, model="osexit"),
     "ppl-0000 ended with exit code 0 before it finished its work"),
    ("handler raising KeyboardInterrupt at import", lambda b, f: _job(b, f, model="interrupt"),
     "cannot import handler 'handler:OracleHandler'"),
    ("non-UTF-8 manifest", lambda b, f: (f / "job.yaml").write_bytes(b"kind: \xff\n") and f / "job.yaml",
     "not UTF-8 text"),
    ("manifest over 1 MiB", lambda b, f: (f / "job.yaml").write_text("# " + "x" * (1 << 20)) and f / "job.yaml",
     "larger than 1024 KiB"),
    ("two documents", lambda b, f: (f / "job.yaml").write_text(_job(b, f).read_text() + "---\na: 1\n")
     and f / "job.yaml", "expected exactly one YAML document, found 2"),
    ("manifest is a folder", lambda b, f: f, "is a folder"),
]


@pytest.mark.parametrize("case,make,message", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_assay_run_refuses(case, make, message, built, tmp_path, capsys):
    manifest = make(built, tmp_path)
    assert cli(["run", str(manifest), "--no-progress"]) == EXIT_PERMANENT
    err = capsys.readouterr().err
    assert "error:" in err and "hint:" in err and message in err and "Traceback" not in err
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("*.parquet"))


def test_the_table_is_large_enough():
    assert len(DATASET_CASES) + len(MODEL_CASES) + len(RUN_CASES) >= 34


def test_numpy_labels_are_named_before_anything_is_written(tmp_path, pennfudan_dir):
    """The seed's labels held numpy ints: a raw traceback after the shards were already staged."""
    data = mini_pennfudan(tmp_path, pennfudan_dir)
    config = _source("yield Sample(str(i), {'png': f.read_bytes()}, {'class': np.int64(1)})")(tmp_path, data)
    from assay import datasets
    from assay.errors import SpecError

    with pytest.raises(SpecError, match="sample '0'"):
        datasets.build(datasets.load_config(config), str(tmp_path / "store"), log=lambda s: None)
    staging = tmp_path / "store" / ".staging"
    assert not staging.exists() or not any(staging.iterdir())
