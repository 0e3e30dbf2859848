"""Built-in handlers (issue 13): a torchvision weights file evaluates with no handler code.

The models are randomly initialised (no weights can be downloaded here), so the metrics are near 0;
what is checked is that the built-in's predictions are exactly those of a hand-written handler or of
torchvision called directly on the same weights, and that every bad config fails with a clear error.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from assay import datasets, layout, packages, results, shards
from assay.builtin import CONFIG_FILE
from assay.builtin import spec as builtin_spec
from assay.cli.main import main
from assay.errors import SpecError
from assay.runner import cmp, ppl
from assay.runner.inputs import preflight
from assay.spec import RunContext
from tests.conftest import FIXTURES, REPO, build_dataset, job_manifest, write_dataset_yaml

#: Mask R-CNN settings small enough for 2 CPU cores (the pennfudan handler takes the same, as config.json).
MASKRCNN_INPUT = {"min_size": 256, "max_size": 512}
DETECTIONS = 20


def _model_yaml(folder: Path, name: str, section: dict, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump({"name": name, "torchvision": section}) + extra)
    return path


def _with_weights(folder: Path, weights: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(weights, folder / name)


def _state_dict(builder, path: Path, seed: int = 0, **kwargs) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(builder(weights=None, **kwargs).state_dict(), path)
    return path


def _samples(dataset) -> list[shards.Sample]:
    out = []
    for i in range(len(dataset.shards)):
        with shards.fetch_shard(dataset, i) as path:
            out += list(shards.iter_shard_samples(path, dataset.shard_uri(i)))
    return out


def _stored_predictions(output: str, dataset) -> dict[str, dict]:
    preds = {}
    for i in range(len(dataset.shards)):
        ids, rows, _ = results.read_local(layout.results_uri(output, i))
        preds.update(zip(ids, rows, strict=True))
    return preds


@pytest.fixture(scope="module")
def maskrcnn_pt(tmp_path_factory) -> Path:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return _state_dict(maskrcnn_resnet50_fpn, tmp_path_factory.mktemp("weights") / "maskrcnn.pt",
                       weights_backbone=None, num_classes=2)


@pytest.fixture(scope="module")
def pennfudan_four(pennfudan_dir, tmp_path_factory):
    """Four PennFudanPed images: Mask R-CNN on CPU takes seconds per image."""
    folder = tmp_path_factory.mktemp("pf4")
    cfg = datasets.load_config(write_dataset_yaml(folder, pennfudan_dir, volume="1M", name="pf4",
                                                  data_filter="PNGImages/FudanPed0000[1-4].png",
                                                  label_filter="PedMasks/FudanPed0000[1-4]_mask.png"))
    return datasets.build(cfg, str(folder / "store"), log=lambda s: None)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    sys.path.insert(0, str(FIXTURES / "digits"))
    from digits_source import write_digits

    folder = tmp_path_factory.mktemp("digits")
    write_digits(folder / "data", count=40)
    return build_dataset(folder, str(folder / "store"), "digits", "digits_source:DigitsSource", "*.png",
                         "labels.json", FIXTURES / "digits" / "digits_source.py")


@pytest.fixture(scope="module")
def resnet_pt(tmp_path_factory) -> Path:
    from torchvision.models import resnet18

    return _state_dict(resnet18, tmp_path_factory.mktemp("weights") / "resnet18.pt", num_classes=10)


def _maskrcnn_section(**overrides) -> dict:
    return {"architecture": "maskrcnn_resnet50_fpn", "num_classes": 2, "weights": "maskrcnn.pt",
            "input": MASKRCNN_INPUT, "label_map": {1: 1}, "detections_per_image": DETECTIONS, **overrides}


class TestMaskRCNN:
    def test_weights_file_evaluates_with_no_handler_code(self, maskrcnn_pt, pennfudan_four, tmp_path, capsys):
        pkg = tmp_path / "pkg"
        path = _model_yaml(pkg, "maskrcnn-builtin", _maskrcnn_section())
        shutil.copy(maskrcnn_pt, pkg / "maskrcnn.pt")
        store = str(tmp_path / "store")
        assert main(["model", "build", str(path), "--store", store, "--format", "json"]) == 0
        built = packages.load_manifest(json.loads(capsys.readouterr().out)["uri"])
        assert sorted(f["path"] for f in built.files) == [CONFIG_FILE, "maskrcnn.pt", "model.yaml"], "no code"
        assert built.handler == "assay.builtin.handlers:TorchvisionDetector" and built.evaluator == "coco"
        assert built.builtin["label_map"] == {"1": 1} and built.builtin["input"] == MASKRCNN_INPUT
        assert main(["model", "info", built.uri]) == 0
        assert "torchvision: maskrcnn_resnet50_fpn, 2 classes, weights file" in capsys.readouterr().out

        manifest = job_manifest("builtin", built.uri, pennfudan_four.uri, "out", workers=1, batch_size=1)
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(manifest))
        proc = subprocess.run([sys.executable, "-m", "assay.cli.main", "run", str(tmp_path / "job.yaml"),
                               "--no-progress"], capture_output=True, text=True, timeout=600, cwd="/")
        assert proc.returncode == 0, proc.stderr
        metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
        print("\nMask R-CNN built-in metrics:", json.dumps(metrics["summary"], indent=1))
        assert {"bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"} <= set(metrics["summary"])
        assert all(0.0 <= metrics["summary"][k] <= 1.0 for k in ("bbox/AP", "segm/AP"))

        # the same weights through the hand-written examples/pennfudan handler, called directly
        stored = _stored_predictions(str(tmp_path / "out"), pennfudan_four)
        reference = _pennfudan_handler(maskrcnn_pt, tmp_path / "handwritten", store)
        for sample in _samples(pennfudan_four):
            want = reference.predict([reference.decode(sample)])[0]
            got = stored[sample.id]
            assert len(got["boxes"]) == len(want["boxes"]) > 0, sample.id
            np.testing.assert_allclose(got["boxes"], want["boxes"].numpy(), rtol=0, atol=1e-3)
            np.testing.assert_allclose(got["scores"], want["scores"].numpy(), rtol=0, atol=1e-5)
            np.testing.assert_array_equal(got["labels"], want["labels"].numpy())
            ours, theirs = got["masks"].decode(), want["masks"].decode()
            assert ours.shape == theirs.shape and (ours != theirs).mean() < 1e-4, sample.id

    def test_num_classes_mismatch_names_both_counts(self, maskrcnn_pt, tmp_path):
        pkg = tmp_path / "pkg"
        path = _model_yaml(pkg, "wrong-classes", _maskrcnn_section(num_classes=91, label_map=None))
        shutil.copy(maskrcnn_pt, pkg / "maskrcnn.pt")
        with pytest.raises(SpecError, match="num_classes is 91 but the weights have 2 classes") as err:
            packages.build(packages.load_config(path), str(tmp_path / "store"), log=lambda s: None)
        assert "num_classes: 2" in err.value.hint

    def test_label_map_to_unknown_category_refused_at_run_start(self, maskrcnn_pt, pennfudan_four, tmp_path):
        pkg = tmp_path / "pkg"
        _with_weights(pkg, maskrcnn_pt, "maskrcnn.pt")
        model = packages.build(packages.load_config(_model_yaml(pkg, "to-unknown", _maskrcnn_section(
            label_map={1: 7}))), str(tmp_path / "store"), log=lambda s: None)
        ctx = RunContext(job_name="t", model_uri=model.uri, dataset_uri=pennfudan_four.uri,
                         output_uri=str(tmp_path / "out"), device="cpu")
        with pytest.raises(SpecError, match=r"label_map maps to \[7\], not among the dataset's category ids") as err:
            preflight(ctx, pennfudan_four, model)
        assert "[1]" in err.value.hint


def _pennfudan_handler(weights: Path, folder: Path, store: str):
    """examples/pennfudan's hand-written handler, packaged with ``weights`` and loaded as ppl loads it."""
    folder.mkdir()
    for name in ("handler.py", "model_def.py", "model.yaml"):
        shutil.copy(REPO / "examples" / "pennfudan" / name, folder / name)
    shutil.copy(weights, folder / "maskrcnn.pt")
    (folder / "config.json").write_text(json.dumps({
        "arch": "resnet50_fpn", "num_classes": 2, **MASKRCNN_INPUT, "box_detections_per_img": DETECTIONS,
        "label_map": {"1": 1}}))
    model = packages.build(packages.load_config(folder / "model.yaml"), store, log=lambda s: None)
    package_dir = packages.unpack(model)
    handler = packages.load_handler_class(model, package_dir)()
    handler.load(package_dir, torch.device("cpu"))
    return handler


class TestClassification:
    def test_digits_accuracy_and_predictions_equal_direct_model(self, digits, resnet_pt, tmp_path):
        from torchvision.models import ResNet18_Weights, resnet18

        pkg = tmp_path / "pkg"
        path = _model_yaml(pkg, "digits-resnet", {"architecture": "resnet18", "num_classes": 10,
                                                  "weights": "resnet18.pt", "input": {"resize": 32, "crop": 32}})
        shutil.copy(resnet_pt, pkg / "resnet18.pt")
        model = packages.build(packages.load_config(path), str(tmp_path / "store"), log=lambda s: None)
        assert model.evaluator == "classification" and model.builtin["input"]["mean"] == [0.485, 0.456, 0.406]
        ctx = RunContext(job_name="digits", model_uri=model.uri, dataset_uri=digits.uri,
                         output_uri=str(tmp_path / "out"), batch_size=8, device="cpu")
        ppl.run(ctx)
        report = cmp.run(ctx)
        assert report.full["num_samples"] == 40 and 0.0 <= report.summary["accuracy"] <= 1.0
        assert "roc_auc/macro" in report.summary, "softmax scores reach the evaluator"

        # torchvision's own preset (not assay's decode) on 8x8 greyscale digits, then the model directly
        direct = resnet18(weights=None, num_classes=10).eval()
        direct.load_state_dict(torch.load(resnet_pt, weights_only=True))
        preset = ResNet18_Weights.IMAGENET1K_V1.transforms(crop_size=32, resize_size=32)
        stored = _stored_predictions(ctx.output_uri, digits)
        samples = _samples(digits)
        images = torch.stack([preset(Image.open(io.BytesIO(s.files["png"])).convert("RGB")) for s in samples])
        with torch.inference_mode():
            want = torch.softmax(direct(images), dim=1).numpy()
        got = np.stack([stored[s.id]["scores"] for s in samples])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert [int(stored[s.id]["label"]) for s in samples] == want.argmax(axis=1).tolist()
        truth = np.array([s.label["label"] for s in samples])
        assert report.summary["accuracy"] == pytest.approx(float((want.argmax(axis=1) == truth).mean()))

    def test_label_map_predicts_the_likeliest_mapped_class(self, digits, tmp_path):
        from torchvision.models import mobilenet_v3_small

        pkg = tmp_path / "pkg"
        _state_dict(mobilenet_v3_small, pkg / "m.pt", num_classes=12)
        # model classes 2..11 are the digits 0..9; classes 0 and 1 are not in the dataset
        path = _model_yaml(pkg, "mapped", {"architecture": "mobilenet_v3_small", "num_classes": 12, "weights": "m.pt",
                                           "input": {"resize": 32, "crop": 32},
                                           "label_map": {k + 2: k for k in range(10)}})
        model = packages.build(packages.load_config(path), str(tmp_path / "store"), log=lambda s: None)
        handler = packages.load_handler_class(model, packages.unpack(model))()
        handler.load(packages.unpack(model), torch.device("cpu"))
        batch = [handler.decode(s) for s in _samples(digits)[:6]]
        with torch.inference_mode():
            probs = torch.softmax(handler.model(torch.stack(batch)), dim=1)
        got = [int(p["label"]) for p in handler.predict(batch)]
        assert got == (probs[:, 2:].argmax(dim=1)).tolist()

    def test_safetensors_weights(self, digits, tmp_path):
        from safetensors.torch import save_file
        from torchvision.models import mobilenet_v3_small

        torch.manual_seed(1)
        net = mobilenet_v3_small(weights=None, num_classes=10)
        pkg = tmp_path / "pkg"
        pkg.mkdir()
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, pkg / "m.safetensors")
        path = _model_yaml(pkg, "st", {"architecture": "mobilenet_v3_small", "num_classes": 10,
                                       "weights": "m.safetensors", "input": {"resize": 32, "crop": 32}})
        model = packages.build(packages.load_config(path), str(tmp_path / "store"), log=lambda s: None)
        handler = packages.load_handler_class(model, packages.unpack(model))()
        handler.load(packages.unpack(model), torch.device("cpu"))
        for key, value in net.state_dict().items():
            assert torch.equal(handler.model.state_dict()[key], value), key


class _Planted:
    """A pickle payload: unpickling it would create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class TestBadConfigs:
    def _config(self, tmp_path, section, extra: str = ""):
        return packages.load_config(_model_yaml(tmp_path / "pkg", "bad", section, extra))

    def test_unknown_architecture_names_close_matches(self, tmp_path):
        with pytest.raises(SpecError, match="'maskrcnn_resnet50' is not a torchvision .*did you mean "
                                            "maskrcnn_resnet50_fpn"):
            self._config(tmp_path, {"architecture": "maskrcnn_resnet50", "num_classes": 2, "weights": "w.pt"})

    def test_keypoint_and_arbitrary_names_are_not_builders(self, tmp_path):
        for name in ("keypointrcnn_resnet50_fpn", "os.system", "torch.load"):
            with pytest.raises(SpecError, match="is not a torchvision detection or classification builder"):
                self._config(tmp_path, {"architecture": name, "num_classes": 2, "weights": "w.pt"})

    def test_unknown_field_and_wrong_evaluator(self, tmp_path):
        with pytest.raises(SpecError, match="unknown field 'num_class' .did you mean 'num_classes'"):
            self._config(tmp_path, {"architecture": "resnet18", "num_class": 2, "weights": "w.pt"})
        with pytest.raises(SpecError, match="run.evaluator 'coco' does not fit a classification model"):
            self._config(tmp_path, {"architecture": "resnet18", "num_classes": 2, "weights": "w.pt"},
                         "run: {evaluator: coco}\n")
        with pytest.raises(SpecError, match="both run.handler and torchvision"):
            self._config(tmp_path, {"architecture": "resnet18", "num_classes": 2, "weights": "w.pt"},
                         "run: {handler: handler:H}\n")
        with pytest.raises(SpecError, match="score_threshold applies to detection models only"):
            self._config(tmp_path, {"architecture": "resnet18", "num_classes": 2, "weights": "w.pt",
                                    "score_threshold": 0.5})
        with pytest.raises(SpecError, match="input: unknown field 'min_size'"):
            self._config(tmp_path, {"architecture": "resnet18", "num_classes": 2, "weights": "w.pt",
                                    "input": {"min_size": 3}})
        with pytest.raises(SpecError, match="num_classes is missing"):
            self._config(tmp_path, {"architecture": "resnet18", "weights": "w.pt"})

    def test_missing_weights_file(self, tmp_path):
        config = self._config(tmp_path, {"architecture": "resnet18", "num_classes": 10, "weights": "nope.pt"})
        with pytest.raises(SpecError, match="'nope.pt' is not a file under .* nor torchvision weights"):
            packages.build(config, str(tmp_path / "store"), log=lambda s: None)
        torch.save({}, tmp_path / "outside.pt")  # a real file, but beside model.yaml's folder, not below it
        for name in ("../outside.pt", str(tmp_path / "outside.pt")):
            config = self._config(tmp_path, {"architecture": "resnet18", "num_classes": 10, "weights": name})
            with pytest.raises(SpecError, match="is not a path below"):
                packages.build(config, str(tmp_path / "store"), log=lambda s: None)

    def test_weights_missing_from_package_refused_at_run_start(self, resnet_pt, digits, tmp_path):
        pkg = tmp_path / "pkg"
        _with_weights(pkg, resnet_pt, "resnet18.pt")
        model = packages.build(self._config(tmp_path, {"architecture": "resnet18", "num_classes": 10,
                                                       "weights": "resnet18.pt"}),
                               str(tmp_path / "store"), log=lambda s: None)
        packages.check_handler_packaged(model)
        stripped = dataclasses.replace(model, files=[f for f in model.files if f["path"] != "resnet18.pt"])
        with pytest.raises(SpecError, match="the built-in handler's resnet18.pt is not in the package"):
            packages.check_handler_packaged(stripped)
        # a hand-written handler whose module is missing is still refused
        handwritten = dataclasses.replace(model, builtin=None, handler="assay_missing_handler:Missing")
        with pytest.raises(SpecError, match="'assay_missing_handler' .* is not in the package, nor installed"):
            packages.check_handler_packaged(handwritten)
        borrowed = dataclasses.replace(model, builtin=None)
        with pytest.raises(SpecError, match="is a built-in handler, which takes its config from a torchvision"):
            packages.check_handler_packaged(borrowed)
        # classification: 10 classes fit the digits; a map to class 12 does not
        ctx = RunContext(job_name="t", model_uri=model.uri, dataset_uri=digits.uri, output_uri=str(tmp_path / "o"))
        preflight(ctx, digits, model)
        mapped = dataclasses.replace(model, builtin={**model.builtin, "label_map": {"0": 12}})
        with pytest.raises(SpecError, match=r"maps to \[12\], not among the dataset's class indices"):
            preflight(ctx, digits, mapped)

    def test_pickled_objects_refused_and_not_executed(self, tmp_path):
        from torchvision.models import mobilenet_v3_small

        marker = tmp_path / "executed"
        pkg = tmp_path / "pkg"
        pkg.mkdir()
        torch.save({"weight": _Planted(marker)}, pkg / "evil.pt")
        torch.save(mobilenet_v3_small(weights=None, num_classes=2), pkg / "module.pt")  # a whole pickled model
        for name in ("evil.pt", "module.pt"):
            config = self._config(tmp_path, {"architecture": "mobilenet_v3_small", "num_classes": 2, "weights": name})
            with pytest.raises(SpecError, match=f"{name} is not a state dict that loads with weights_only=True"):
                packages.build(config, str(tmp_path / "store"), log=lambda s: None)
        assert not marker.exists(), "the payload must never run"
        torch.save({"model": {"a": torch.zeros(1)}, "epoch": 3}, pkg / "ckpt.pt")
        config = self._config(tmp_path, {"architecture": "mobilenet_v3_small", "num_classes": 2, "weights": "ckpt.pt"})
        with pytest.raises(SpecError, match="not a state dict of tensors"):
            packages.build(config, str(tmp_path / "store"), log=lambda s: None)


class TestTorchvisionWeightsNames:
    """weights: DEFAULT (or Enum.MEMBER) resolves offline; the download lands in torch.hub's cache."""

    def test_enum_resolves_without_network(self, tmp_path):
        config = packages.load_config(_model_yaml(tmp_path / "a", "coco", {
            "architecture": "maskrcnn_resnet50_fpn", "weights": "MaskRCNN_ResNet50_FPN_Weights.COCO_V1",
            "label_map": {"person": 1}}))
        assert config.builtin["source"] == "MaskRCNN_ResNet50_FPN_Weights.COCO_V1"
        assert config.builtin["num_classes"] == 91 and config.builtin["categories"][1] == "person"
        assert config.builtin["label_map"] == {"1": 1} and config.evaluator == "coco"
        default = packages.load_config(_model_yaml(tmp_path / "b", "r18", {"architecture": "resnet18",
                                                                           "weights": "DEFAULT"}))
        assert default.builtin["source"] == "ResNet18_Weights.IMAGENET1K_V1" and default.builtin["num_classes"] == 1000
        with pytest.raises(SpecError, match="are not for maskrcnn_resnet50_fpn, whose weights are "
                                            "MaskRCNN_ResNet50_FPN_Weights"):
            packages.load_config(_model_yaml(tmp_path / "c", "x", {"architecture": "maskrcnn_resnet50_fpn",
                                                                   "weights": "ResNet18_Weights.DEFAULT"}))
        with pytest.raises(SpecError, match="has no weights 'COCO_V9'"):
            packages.load_config(_model_yaml(tmp_path / "d", "x", {"architecture": "maskrcnn_resnet50_fpn",
                                                                   "weights": "COCO_V9"}))
        with pytest.raises(SpecError, match="'persn' is not a class of the model .did you mean person"):
            packages.load_config(_model_yaml(tmp_path / "e", "x", {"architecture": "maskrcnn_resnet50_fpn",
                                                                   "weights": "DEFAULT", "label_map": {"persn": 1}}))

    def test_example_model_yaml(self):
        config = packages.load_config(REPO / "examples" / "torchvision" / "model.yaml")
        assert config.builtin["label_map"] == {"1": 1} and config.builtin["num_classes"] == 91
        assert config.code == [] and config.handler == builtin_spec.HANDLERS["detection"]

    def test_readme_model_yaml(self, tmp_path):
        """The README's torchvision: example is a model.yaml that parses as written."""
        import re

        block = next(b for b in re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.S)
                     if "torchvision:" in b)
        (tmp_path / "model.yaml").write_text(block)
        config = packages.load_config(tmp_path / "model.yaml")
        assert config.builtin["architecture"] == "maskrcnn_resnet50_fpn" and config.builtin["num_classes"] == 2
        assert config.builtin["label_map"] == {"1": 1} and config.evaluator == "coco"

    def _seed(self, path: Path) -> bytes:
        from torchvision.models import mobilenet_v3_small

        _state_dict(mobilenet_v3_small, path)
        return path.read_bytes()

    def test_cached_download_is_packed_with_its_preprocessing(self, tmp_path, monkeypatch):
        from torchvision.models import MobileNet_V3_Small_Weights

        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
        url_name = Path(MobileNet_V3_Small_Weights.IMAGENET1K_V1.url).name
        data = self._seed(tmp_path / "torch" / "hub" / "checkpoints" / url_name)
        config = packages.load_config(_model_yaml(tmp_path / "pkg", "online", {
            "architecture": "mobilenet_v3_small", "weights": "DEFAULT", "input": {"crop": 200}}))
        model = packages.build(config, str(tmp_path / "store"), log=lambda s: None)
        package_dir = packages.unpack(model)
        assert (package_dir / "weights" / url_name).read_bytes() == data, "the package holds the weights itself"
        assert model.builtin["input"] == {"resize": 256, "crop": 200, "mean": [0.485, 0.456, 0.406],
                                          "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}
        assert len(model.builtin["categories"]) == 1000
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # a worker has no cache and no network
        handler = packages.load_handler_class(model, package_dir)()
        handler.load(package_dir, torch.device("cpu"))
        assert torch.equal(handler.model.classifier[-1].weight, torch.load(
            tmp_path / "torch" / "hub" / "checkpoints" / url_name, weights_only=True)["classifier.3.weight"])

    def test_download_fills_the_hub_cache(self, tmp_path, monkeypatch):
        from torchvision.models import MobileNet_V3_Small_Weights

        source = tmp_path / "served.pth"
        data = self._seed(source)
        calls = []

        def download(url, dst, hash_prefix=None, progress=True):
            calls.append((url, hash_prefix))
            shutil.copy(source, dst)

        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        monkeypatch.setattr(torch.hub, "download_url_to_file", download)
        config = packages.load_config(_model_yaml(tmp_path / "pkg", "online", {
            "architecture": "mobilenet_v3_small", "weights": "MobileNet_V3_Small_Weights.IMAGENET1K_V1"}))
        logged = []
        model = packages.build(config, str(tmp_path / "store"), log=logged.append)
        url = MobileNet_V3_Small_Weights.IMAGENET1K_V1.url
        assert calls == [(url, url.rsplit("-", 1)[1].split(".")[0])], "checked against the hash in its name"
        assert any(url in line for line in logged)
        cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(url).name
        assert cached.read_bytes() == data
        assert {f["path"] for f in model.files} == {CONFIG_FILE, "model.yaml", f"weights/{cached.name}"}
        packages.build(config, str(tmp_path / "store"), log=lambda s: None)
        assert len(calls) == 1, "a second build reuses the cache"


    def test_coco_v1_detector_is_built_as_torchvision_builds_it(self, tmp_path, monkeypatch):
        """COCO_V1 Mask R-CNN weights (frozen batch norm: no step counters) give torchvision's own model:
        FrozenBatchNorm2d with eps 0, the same outputs; the same tensors as a file load too."""
        from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn
        from torchvision.ops.misc import FrozenBatchNorm2d

        member = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
        cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(member.url).name
        cached.parent.mkdir(parents=True)
        torch.manual_seed(0)
        state = {k: v for k, v in maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict().items()
                 if not k.endswith("num_batches_tracked")}  # the layout of torchvision's COCO_V1 file
        torch.save(state, cached)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
        reference = maskrcnn_resnet50_fpn(weights=member).eval()

        model = packages.build(packages.load_config(_model_yaml(tmp_path / "pkg", "coco-v1", {
            "architecture": "maskrcnn_resnet50_fpn", "weights": "COCO_V1", "label_map": {"person": 1}})),
            str(tmp_path / "store"), log=lambda s: None)
        package_dir = packages.unpack(model)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # a worker has no cache and no network
        handler = packages.load_handler_class(model, package_dir)()
        handler.load(package_dir, torch.device("cpu"))
        norms = [m for m in handler.model.modules() if isinstance(m, FrozenBatchNorm2d)]
        assert norms and all(m.eps == 0.0 for m in norms), "COCO_V1 detectors run with eps 0, as torchvision's"
        assert torch.hub.get_dir() == str(tmp_path / "empty" / "hub"), "torch.hub's own setting is left as it was"
        image = [torch.rand(3, 96, 128)]
        with torch.no_grad():
            want, got = reference(image)[0], handler.model(image)[0]
        assert torch.equal(want["boxes"], got["boxes"]) and torch.equal(want["scores"], got["scores"])

        # fine-tuned from those weights and saved as a file: no step counters either, and it loads
        torch.save(state, tmp_path / "ft.pt")
        _with_weights(tmp_path / "ft", tmp_path / "ft.pt", "ft.pt")
        ft = packages.build(packages.load_config(_model_yaml(tmp_path / "ft", "ft", {
            "architecture": "maskrcnn_resnet50_fpn", "num_classes": 91, "weights": "ft.pt"})),
            str(tmp_path / "store"), log=lambda s: None)
        assert ft.builtin["source"] == "file"


def _no_network(*args, **kwargs):
    raise AssertionError("no download expected: the weights are in the hub cache")


def test_spec_round_trips_through_the_package(tmp_path, resnet_pt):
    pkg = tmp_path / "pkg"
    _with_weights(pkg, resnet_pt, "resnet18.pt")
    model = packages.build(packages.load_config(_model_yaml(pkg, "rt", {
        "architecture": "resnet18", "num_classes": 10, "weights": "resnet18.pt"})), str(tmp_path / "s"),
        log=lambda s: None)
    assert builtin_spec.read(packages.unpack(model)) == model.builtin
    again = packages.load_manifest(model.uri)
    assert again.builtin == model.builtin
