"""torchvision builders a built-in package may name, their weights enums, and the weights files.

Only builders registered in ``torchvision.models`` (classification) and ``torchvision.models.detection``
(keypoint models excluded: no evaluator scores keypoints) are accepted, so model.yaml can never make
assay import an arbitrary name. Weights are read with ``torch.load(weights_only=True)`` or safetensors.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.error import URLError
from urllib.parse import urlparse

from assay.errors import AssayError, SpecError, TransientStorageError

if TYPE_CHECKING:
    from torch import nn
    from torchvision.models import WeightsEnum

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


def weights_enum(architecture: str, name: str, where: str) -> WeightsEnum:
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


def fetch(weights: WeightsEnum, log: Callable[[str], None] = print) -> Path:
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
        try:
            torch.hub.download_url_to_file(weights.url, str(cached), match.group(1) if match else None,
                                           progress=False)
        except (URLError, OSError) as exc:  # no network, DNS, proxy, refused, HTTP 404/5xx
            code = getattr(exc, "code", None)
            error = TransientStorageError if isinstance(code, int) and (code >= 500 or code == 429) else AssayError
            raise error(f"torchvision weights {weights}: cannot download {weights.url} into {cached}: "
                        f"{getattr(exc, 'reason', None) or exc}",
                        "connect this machine to the network (or set https_proxy), or copy the file there from a "
                        "machine that has it, or name a weights file beside model.yaml instead") from exc
    return cached


def classification_input(weights: WeightsEnum) -> dict[str, Any]:
    """The preprocessing a classification weights member was trained with (its ``transforms()``)."""
    preset = weights.transforms()
    return {"resize": int(preset.resize_size[0]), "crop": int(preset.crop_size[0]),
            "mean": [float(v) for v in preset.mean], "std": [float(v) for v in preset.std],
            "interpolation": preset.interpolation.value}


def instantiate(spec: dict[str, Any], weights_path: Path, where: str) -> nn.Module:
    """The model of the resolved spec with its weights loaded, as torchvision itself would make it.

    Weights named by enum go through the builder with ``weights=`` (torch.hub's cache pointed at the
    packed file, so nothing is downloaded): torchvision then picks what goes with those weights (frozen
    batch norm and eps 0 for the COCO_V1 detectors, transform_input for GoogLeNet and Inception, ...).
    A state dict file is loaded into the plain builder, checked first by ``load_state``.
    """
    if spec["source"] == "file":
        model = build(spec)
        load_state(model, read_state_dict(weights_path, where), spec, where)
        return model
    member = weights_enum(spec["architecture"], spec["source"], where)
    with _hub_cache_holding(weights_path, member):
        return build(spec, member)


@contextlib.contextmanager
def _hub_cache_holding(weights_path: Path, member: WeightsEnum) -> Iterator[None]:
    """For the block, torch.hub's cache is a folder whose only checkpoint is ``weights_path`` (under the
    name ``member``'s URL gives it), and every torch.load is weights_only: torch.hub's loader would
    otherwise unpickle the file in full."""
    import torch.hub

    previous = torch.hub._hub_dir  # None unless set_dir was called: get_dir() follows $TORCH_HOME then
    env = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    with tempfile.TemporaryDirectory(prefix="assay-hub-") as tmp:
        checkpoints = Path(tmp) / "checkpoints"
        checkpoints.mkdir()
        (checkpoints / os.path.basename(urlparse(member.url).path)).symlink_to(Path(weights_path).resolve())
        torch.hub.set_dir(tmp)
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            yield
        finally:
            torch.hub._hub_dir = previous
            for key, value in env.items():
                os.environ.pop(key, None)
                if value is not None:
                    os.environ[key] = value


def build(spec: dict[str, Any], weights: WeightsEnum | None = None) -> nn.Module:
    """The model for the resolved spec; untrained unless ``weights`` (an enum member, read from torch.hub's
    cache: see ``instantiate``). Nothing is ever downloaded here."""
    from torchvision import models

    kwargs: dict[str, Any] = {"weights": weights, "num_classes": spec["num_classes"]}
    if spec["task"] == "detection":
        kwargs["weights_backbone"] = None
        kwargs.update(spec.get("input") or {})
    try:
        return models.get_model_builder(spec["architecture"])(**kwargs)
    except (TypeError, ValueError) as exc:
        shown = {**kwargs, "weights": str(weights) if weights is not None else None}
        raise SpecError(f"model.yaml torchvision: {spec['architecture']} cannot be built with {shown}: {exc}",
                        "remove the option it does not take (SSD models have a fixed input size)") from exc
    except Exception as exc:
        if weights is None:
            raise
        raise SpecError(f"model.yaml torchvision: the {weights} weights file does not load into "
                        f"{spec['architecture']} with weights_only=True: {str(exc)[:300]}",
                        "delete the file from torch.hub's cache ($TORCH_HOME/hub/checkpoints) and build the "
                        "model again; a package whose file is damaged must be rebuilt") from exc


def read_state_dict(path: Path, where: str) -> dict[str, Any]:
    """A plain state dict from ``.safetensors`` or a torch file, never unpickling arbitrary objects."""
    import torch

    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise SpecError(f"{where}: {path.name} is a safetensors file but safetensors is not installed",
                            "pip install 'assay[safetensors]'") from None
        try:
            return load_file(str(path))
        except Exception as exc:
            raise SpecError(f"{where}: {path.name} is not a safetensors file ({str(exc)[:200]})",
                            "save the weights with safetensors.torch.save_file(model.state_dict(), path), or "
                            "give the file the suffix of what it is (.pt for torch.save)") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SpecError(f"{where}: {path.name} is not a state dict that loads with weights_only=True ({exc})",
                        "save the weights with torch.save(model.state_dict(), path); pickled models or "
                        "other objects are refused") from exc
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise SpecError(f"{where}: {path.name} holds a {type(state).__name__}, not a state dict of tensors",
                        "save torch.save(model.state_dict(), path), not a checkpoint of several objects")
    return state


_BN_COUNTER = ".num_batches_tracked"


def load_state(model: nn.Module, state: dict[str, Any], spec: dict[str, Any], where: str) -> None:
    """Load ``state`` into ``model``, first naming what does not fit (class count, architecture)."""
    expected = model.state_dict()
    # batch norm's step counter plays no part in inference, and models trained with frozen batch norm
    # (torchvision's detection recipe) have none: its absence, or presence, is no misfit
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith(_BN_COUNTER))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.endswith(_BN_COUNTER))
    if missing or unexpected:
        raise SpecError(f"{where}: the weights do not fit {spec['architecture']}: {len(missing)} tensors missing "
                        f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})",
                        "check torchvision.architecture: the weights were saved from another model")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
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
    # load_state_dict copies integer or bool tensors into float parameters without a word
    cast = [(k, state[k].dtype) for k, v in expected.items()
            if k in state and v.is_floating_point() and not state[k].is_floating_point()]
    if cast:
        key, dtype = cast[0]
        raise SpecError(f"{where}: {len(cast)} weight tensors are not floating point (e.g. {key} is {dtype}); "
                        f"{spec['architecture']} expects float weights",
                        "save the weights of the trained model as they are, not converted to an integer or "
                        "bool type: torch.save(model.state_dict(), path)")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
