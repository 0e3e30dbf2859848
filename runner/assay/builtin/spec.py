"""The ``torchvision:`` section of model.yaml: parse it, resolve it into the package, check it at run start.

``parse`` validates every field without the network or the weights; ``resolve`` (at ``assay model
build``) fetches torchvision weights named by enum into the package, reads the weights file and checks
it against the architecture and num_classes, and returns the config stored in the package and its
manifest; ``check_dataset`` (at run start) checks the label map and class count against the dataset.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from assay.builtin import CONFIG_FILE, models
from assay.errors import SpecError

HANDLERS = {"detection": "assay.builtin.handlers:TorchvisionDetector",
            "classification": "assay.builtin.handlers:TorchvisionClassifier"}
EVALUATORS = {"detection": "coco", "classification": "classification"}
FIELDS = {"architecture", "num_classes", "weights", "input", "label_map", "score_threshold",
          "detections_per_image"}
INPUT_FIELDS = {"detection": {"min_size", "max_size"},
                "classification": {"resize", "crop", "mean", "std", "interpolation"}}
#: ImageNet preprocessing, torchvision's classification default, for weights files with no ``input``.
CLASSIFICATION_INPUT = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                        "interpolation": "bilinear"}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def _unknown(keys: Iterable[Any], allowed: set[str], where: str) -> None:
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            raise SpecError(f"{where}: unknown field {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                            f"the fields are {', '.join(sorted(allowed))}")


def _int(value: Any, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(f"{where} must be an integer >= {low}, got {value!r}")
    return value


def parse(doc: Any, path: Path, evaluator: str | None) -> dict[str, Any]:
    """The validated section (weights not yet read); raises SpecError naming the field."""
    where = f"{path}: torchvision"
    if not isinstance(doc, dict):
        raise SpecError(f"{where} must be a mapping", "e.g. torchvision: {architecture: resnet18, weights: w.pt}")
    _unknown(doc, FIELDS, where)
    arch = doc.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise SpecError(f"{where}.architecture is missing", "name a torchvision builder, e.g. maskrcnn_resnet50_fpn")
    task = models.task_of(arch, f"{where}.architecture")
    if evaluator not in (None, EVALUATORS[task]):
        raise SpecError(f"{path}: run.evaluator {evaluator!r} does not fit a {task} model",
                        f"use run.evaluator: {EVALUATORS[task]}, or leave it out")
    weights = doc.get("weights")
    if not isinstance(weights, str) or not weights:
        raise SpecError(f"{where}.weights is missing",
                        "name a state-dict file beside model.yaml, or torchvision weights such as DEFAULT")
    spec: dict[str, Any] = {"architecture": arch, "task": task, "weights": weights, "source": "file",
                            "categories": None}
    if not (path.parent / weights).is_file() and models.ENUM_NAME.match(weights):
        member = models.weights_enum(arch, weights, f"{where}.weights")
        spec["source"] = f"{type(member).__name__}.{member.name}"
        spec["categories"] = list(member.meta.get("categories") or []) or None
    num_classes = doc.get("num_classes")
    if num_classes is None:
        if spec["categories"] is None:
            raise SpecError(f"{where}.num_classes is missing",
                            "give the class count of the weights (detection models count the background)")
        num_classes = len(spec["categories"])
    spec["num_classes"] = _int(num_classes, f"{where}.num_classes", 2 if task == "detection" else 1)
    if spec["categories"] is not None and len(spec["categories"]) != spec["num_classes"]:
        raise SpecError(f"{where}.num_classes is {num_classes} but {spec['source']} has "
                        f"{len(spec['categories'])} classes", "leave num_classes out for torchvision weights")
    spec["input"] = _input(doc.get("input"), task, f"{where}.input")
    spec["label_map"] = _label_map(doc.get("label_map"), spec, f"{where}.label_map")
    spec["score_threshold"] = spec["detections_per_image"] = None
    for key in ("score_threshold", "detections_per_image"):
        if doc.get(key) is not None and task != "detection":
            raise SpecError(f"{where}.{key} applies to detection models only", f"remove it for {arch}")
    if doc.get("score_threshold") is not None:
        value = doc["score_threshold"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise SpecError(f"{where}.score_threshold must be a number in [0, 1], got {value!r}")
        spec["score_threshold"] = float(value)
    if doc.get("detections_per_image") is not None:
        spec["detections_per_image"] = _int(doc["detections_per_image"], f"{where}.detections_per_image", 1)
    return spec


def _input(doc: Any, task: str, where: str) -> dict[str, Any]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SpecError(f"{where} must be a mapping", f"its fields for {task}: {', '.join(sorted(INPUT_FIELDS[task]))}")
    _unknown(doc, INPUT_FIELDS[task], where)
    out: dict[str, Any] = {}
    for key in ("min_size", "max_size", "resize", "crop"):
        if key in doc:
            out[key] = _int(doc[key], f"{where}.{key}", 1)
    for key in ("mean", "std"):
        if key in doc:
            value = doc[key]
            if not (isinstance(value, list) and len(value) == 3
                    and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
                raise SpecError(f"{where}.{key} must be 3 numbers (R, G, B), got {value!r}")
            if key == "std" and min(value) <= 0:
                raise SpecError(f"{where}.std must be positive, got {value!r}")
            out[key] = [float(v) for v in value]
    if "interpolation" in doc:
        if doc["interpolation"] not in INTERPOLATIONS:
            raise SpecError(f"{where}.interpolation {doc['interpolation']!r} is unknown",
                            f"use one of {', '.join(INTERPOLATIONS)}")
        out["interpolation"] = doc["interpolation"]
    return out


def _label_map(doc: Any, spec: dict[str, Any], where: str) -> dict[str, int] | None:
    """Model class (an index, or a category name of torchvision weights) -> dataset class; JSON keys."""
    if doc is None:
        return None
    if not isinstance(doc, dict) or not doc:
        raise SpecError(f"{where} must be a non-empty mapping of model class -> dataset class",
                        "e.g. label_map: {1: 1}; model classes left out are dropped")
    low = 1 if spec["task"] == "detection" else 0
    out: dict[str, int] = {}
    for key, value in doc.items():
        index = key
        if isinstance(key, str) and not key.isdigit():
            names = spec["categories"] or []
            if key not in names:
                close = difflib.get_close_matches(key, names, n=3)
                raise SpecError(f"{where}: {key!r} is not a class of the model"
                                + (f" (did you mean {', '.join(close)}?)" if close else ""),
                                "use class indices, or category names of torchvision weights")
            index = names.index(key)
        index = _int(int(index) if isinstance(index, str) else index, f"{where} key {key!r}", 0)
        if index >= spec["num_classes"]:
            raise SpecError(f"{where}: model class {key!r} is outside 0..{spec['num_classes'] - 1}",
                            "keys are the model's class indices")
        out[str(index)] = _int(value, f"{where}[{key!r}]", low)
    return out


def resolve(spec: dict[str, Any], base_dir: Path,
            log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Path]]:
    """The config stored in the package, and the files it adds (member name -> local path).

    Enum weights are fetched here, so the package holds them and a run needs no network. The weights
    are read and loaded into the architecture now: a wrong file fails the build, not every worker.
    """
    resolved = dict(spec)
    where = f"{base_dir / 'model.yaml'}: torchvision.weights"
    if spec["source"] == "file":
        if PurePosixPath(spec["weights"]).is_absolute() or ".." in PurePosixPath(spec["weights"]).parts:
            raise SpecError(f"{where}: {spec['weights']!r} is not a path below {base_dir}",
                            "put the weights file in model.yaml's folder (or below it) and name it relative "
                            "to that folder: the package holds it under that name")
        path = base_dir / spec["weights"]
        if not path.is_file():
            raise SpecError(f"{where}: {spec['weights']!r} is not a file under {base_dir}, nor torchvision weights",
                            "put the state dict beside model.yaml, or name weights such as DEFAULT or "
                            "MaskRCNN_ResNet50_FPN_Weights.COCO_V1")
        name = Path(spec["weights"]).as_posix()
    else:
        member = models.weights_enum(spec["architecture"], spec["source"], where)
        path = models.fetch(member, log)
        name = f"weights/{path.name}"
        if spec["task"] == "classification":
            resolved["input"] = {**models.classification_input(member), **spec["input"]}
    if spec["task"] == "classification":
        resolved["input"] = {**CLASSIFICATION_INPUT, **resolved["input"]}
    resolved["weights"] = name
    models.instantiate(resolved, path, where)
    return resolved, {name: path}


def config_bytes(resolved: dict[str, Any]) -> bytes:
    return json.dumps(resolved, indent=1, sort_keys=True).encode()


def read(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / CONFIG_FILE).read_text())


def check_dataset(spec: dict[str, Any], label_schema: dict[str, Any], model: str) -> None:
    """At run start: the model's classes map onto the dataset's (category ids, or class count)."""
    label_map = spec.get("label_map")
    if spec["task"] == "detection":
        known = {int(c["id"]) for c in label_schema.get("categories") or [] if isinstance(c, dict) and "id" in c}
        where, hint = "category ids", f"the dataset's category ids are {sorted(known)}"
    else:
        classes = label_schema.get("classes") or []
        known = set(range(len(classes)))
        where, hint = "class indices", f"the dataset's classes are 0..{len(classes) - 1} ({', '.join(classes[:10])})"
        if label_map is None and spec["num_classes"] != len(classes):
            raise SpecError(f"model {model}: {spec['num_classes']} classes but the dataset has {len(classes)}",
                            "add torchvision.label_map (model class -> dataset class index) to model.yaml")
    unknown = sorted({v for v in (label_map or {}).values() if v not in known})
    if unknown:
        raise SpecError(f"model {model}: torchvision.label_map maps to {unknown}, not among the dataset's {where}",
                        f"{hint}; fix label_map in model.yaml and build again")
