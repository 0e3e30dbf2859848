"""torchvision builders a built-in package may name, their weights enums, and the weights files.

Only builders registered in ``torchvision.models`` (classification) and ``torchvision.models.detection``
(keypoint models excluded: no evaluator scores keypoints) are accepted, so model.yaml can never make
assay import an arbitrary name. Weights are read with ``torch.load(weights_only=True)`` or safetensors.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from assay.errors import SpecError

#: torchvision weights names: DEFAULT, a member (COCO_V1) or Enum.MEMBER; files are never all upper case.
ENUM_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9_]*\.)?[A-Z][A-Z0-9_]*$")


def architectures() -> dict[str, str]:
    """Builder name -> task (``detection`` or ``classification``)."""
    from torchvision import models

    found = {name: "classification" for name in models.list_models(module=models)}
    found.update({name: "detection" for name in models.list_models(module=models.detection)
                  if not name.startswith("keypoint")})
    return found


def task_of(architecture: str, where: str) -> str:
    known = architectures()
    if architecture not in known:
        close = difflib.get_close_matches(architecture, known, n=3, cutoff=0.5)
        raise SpecError(f"{where}: {architecture!r} is not a torchvision detection or "
                        f"classification builder" + (f" (did you mean {', '.join(close)}?)" if close else ""),
                        "use a name from torchvision.models.list_models(), e.g. maskrcnn_resnet50_fpn or resnet18")
    return known[architecture]


def weights_enum(architecture: str, name: str, where: str):
    """The torchvision weights member ``name`` (``DEFAULT``, ``COCO_V1`` or ``Enum.COCO_V1``); no download."""
    from torchvision import models

    enum = models.get_model_weights(architecture)
    prefix, _, member = name.rpartition(".")
    if prefix and prefix != enum.__name__:
        raise SpecError(f"{where}: weights {name!r} are not for {architecture}, whose weights are {enum.__name__}",
                        f"use one of {', '.join(f'{enum.__name__}.{m}' for m in enum.__members__)}")
    try:
        return enum[member]
    except KeyError:
        raise SpecError(f"{where}: {enum.__name__} has no weights {member!r}",
                        f"use DEFAULT or one of {', '.join(enum.__members__)}") from None


def fetch(weights, log=print) -> Path:
    """The weights file of a torchvision enum member, downloaded once into torch.hub's cache.

    The cache is the one ``weights.get_state_dict()`` uses ($TORCH_HOME/hub/checkpoints, named by the
    URL), so a file torchvision already fetched is reused; a download is checked against the hash
    prefix in its name, and a cached file is trusted as torch.hub trusts it.
    """
    import torch.hub

    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        match = torch.hub.HASH_REGEX.search(cached.name)
        log(f"  downloading {weights.url}")
        torch.hub.download_url_to_file(weights.url, str(cached), match.group(1) if match else None, progress=False)
    return cached


def classification_input(weights) -> dict[str, Any]:
    """The preprocessing a classification weights member was trained with (its ``transforms()``)."""
    preset = weights.transforms()
    return {"resize": int(preset.resize_size[0]), "crop": int(preset.crop_size[0]),
            "mean": [float(v) for v in preset.mean], "std": [float(v) for v in preset.std],
            "interpolation": preset.interpolation.value}


def build(spec: dict[str, Any]):
    """An untrained model for the resolved spec (``weights=None``: nothing is ever downloaded here)."""
    from torchvision import models

    kwargs: dict[str, Any] = {"weights": None, "num_classes": spec["num_classes"]}
    if spec["task"] == "detection":
        kwargs["weights_backbone"] = None
        kwargs.update(spec.get("input") or {})
    try:
        return models.get_model_builder(spec["architecture"])(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"model.yaml torchvision: {spec['architecture']} cannot be built with {kwargs}: {exc}",
                        "remove the option it does not take (SSD models have a fixed input size)") from exc


def read_state_dict(path: Path, where: str) -> dict[str, Any]:
    """A plain state dict from ``.safetensors`` or a torch file, never unpickling arbitrary objects."""
    import torch

    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise SpecError(f"{where}: {path.name} is a safetensors file but safetensors is not installed",
                            "pip install 'assay[safetensors]'") from None
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError: all mean "not weights"
        raise SpecError(f"{where}: {path.name} is not a state dict that loads with weights_only=True ({exc})",
                        "save the weights with torch.save(model.state_dict(), path); pickled models or "
                        "other objects are refused") from exc
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise SpecError(f"{where}: {path.name} holds a {type(state).__name__}, not a state dict of tensors",
                        "save torch.save(model.state_dict(), path), not a checkpoint of several objects")
    return state


def load_state(model, state: dict[str, Any], spec: dict[str, Any], where: str) -> None:
    """Load ``state`` into ``model``, first naming what does not fit (class count, architecture)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SpecError(f"{where}: the weights do not fit {spec['architecture']}: {len(missing)} tensors missing "
                        f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})",
                        "check torchvision.architecture: the weights were saved from another model")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        key, got, want = wrong[-1]
        n = spec["num_classes"]
        # class-sized tensors are k * num_classes long (k: 1, 4 box coordinates, or anchors per cell)
        counts = {g[0] * n // w[0] for _, g, w in wrong if g and w and g[1:] == w[1:] and g[0] * n % w[0] == 0}
        if len(counts) != 1:
            raise SpecError(f"{where}: the weights do not fit {spec['architecture']}: {key} is {list(got)}, "
                            f"the model expects {list(want)}",
                            "check torchvision.architecture and num_classes in model.yaml")
        classes = counts.pop()
        raise SpecError(f"{where}: num_classes is {n} but the weights have {classes} classes ({key} is "
                        f"{list(got)}; {spec['architecture']} with num_classes {n} expects {list(want)})",
                        f"set torchvision.num_classes: {classes} in model.yaml (for detection models the "
                        "background counts as a class)")
    model.load_state_dict(state)
