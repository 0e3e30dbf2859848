"""A run's inputs, pinned: the dataset and model manifests a ppl worker or cmp reads, checked against
the versions the run was pinned to at its start (``RunContext.model_version`` / ``dataset_version``)."""

from __future__ import annotations

import platform

from assay import layout, packages, shards, storage
from assay.errors import IntegrityError, ObjectNotFound, SpecError
from assay.spec import RunContext


def load_pinned(ctx: RunContext) -> tuple[shards.DatasetManifest, packages.ModelManifest]:
    dataset = shards.load_manifest(ctx.dataset_uri)
    model = packages.load_manifest(ctx.model_uri)
    for what, got, want, uri in (("dataset", dataset.version, ctx.dataset_version, ctx.dataset_uri),
                                 ("model", model.version, ctx.model_version, ctx.model_uri)):
        if want and got != want:
            raise IntegrityError(f"the {what} at {uri} is version {got}, but this run is pinned to {want}",
                                 f"the {what} changed after the run started; evaluate it into another output "
                                 "(on a cluster: a new EvaluationJob; with `assay run`: --overwrite)")
    return dataset, model


def run_conditions(device: str, threads: int, ctx: RunContext) -> dict[str, str | int]:
    """What produced a shard's predictions besides model and data: versions, device, threads, batch size."""
    import torch
    import torchvision

    from assay import __version__

    return {"assay": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "device": device, "threads": threads,
            "precision": ctx.precision, "batchSize": ctx.batch_size}


def preflight(ctx: RunContext, dataset: shards.DatasetManifest, model: packages.ModelManifest) -> None:
    """What can be known before any inference: the evaluator fits the labels, the handler is packaged,
    a built-in's classes map onto the dataset's."""
    name = ctx.evaluator or model.evaluator
    if not name:
        raise SpecError("no evaluator: model.yaml has no run.evaluator and the job sets no spec.evaluator",
                        "set run.evaluator: coco (or classification, or handler) in model.yaml")
    if name != "handler":
        from assay.metrics import get_evaluator

        try:
            get_evaluator(name, dataset.label_schema)
        except SpecError as exc:
            raise SpecError(f"evaluator {name!r} does not fit dataset {dataset.name}@{dataset.version}: "
                            f"{exc.message}", exc.hint) from exc
    for what, uri in ((f"dataset {dataset.name}@{dataset.version}", dataset.uri),
                      (f"model {model.name}@{model.version}", model.uri)):
        if _within(ctx.output_uri, uri):
            raise SpecError(f"spec.output.uri {ctx.output_uri} is inside the folder of {what} ({uri})",
                            "choose an output outside the store's datasets/ and models/ folders, e.g. "
                            "<store>/runs/<job name>: a version folder holds exactly what was built")
    packages.check_handler_packaged(model)
    if model.builtin is not None:
        from assay.builtin import spec as builtin_spec

        task = model.builtin["task"]
        if name != builtin_spec.EVALUATORS[task]:
            raise SpecError(f"evaluator {name!r} does not fit model {model.name}, a built-in {task} handler",
                            f"use evaluator {builtin_spec.EVALUATORS[task]} (or leave spec.evaluator out)")
        builtin_spec.check_dataset(model.builtin, dataset.label_schema, model.name)


def _within(uri: str, folder: str) -> bool:
    """Whether ``uri`` is ``folder`` or below it (local paths resolved, so links and ``..`` do not hide it)."""
    a, b = storage.parse(uri), storage.parse(folder)
    if a.scheme != b.scheme or a.bucket != b.bucket:
        return False
    if a.scheme == "file":
        from pathlib import Path

        return Path(a.path).resolve().is_relative_to(Path(b.path).resolve())
    return f"{a.path.strip('/')}/".startswith(f"{b.path.strip('/')}/")


def check_present(dataset: shards.DatasetManifest, model: packages.ModelManifest) -> None:
    """Every object a run will read is in the store (one listing, one HEAD), so a missing shard or
    package fails the run before any worker starts rather than one worker after hours."""
    names = set(storage.list_names(dataset.uri))
    missing = [f"{s.name}{suffix}" for s in dataset.shards for suffix in (".tar", ".labels.json")
               if f"{s.name}{suffix}" not in names]
    if missing:
        raise ObjectNotFound(f"dataset {dataset.name}@{dataset.version} at {dataset.uri} lacks {len(missing)} "
                             f"object(s), e.g. {', '.join(missing[:3])}",
                             "upload the whole dataset folder again (`assay dataset build` resumes)")
    package = storage.join(model.uri, packages.PACKAGE)
    if storage.size(package) != model.package_bytes:
        raise IntegrityError(f"{package} is not the size its manifest records",
                             "upload the model folder again, or rebuild it with `assay model build`")


def resolve(ctx: RunContext) -> tuple[RunContext, shards.DatasetManifest, packages.ModelManifest]:
    """Pin a run: exact versions, objects present, evaluator and handler checked, shard groups chosen."""
    dataset = shards.load_manifest(ctx.dataset_uri)
    model = packages.load_manifest(ctx.model_uri)
    check_present(dataset, model)
    per_index = ctx.shards_per_index or layout.auto_shards_per_index(len(dataset.shards), ctx.worker_count)
    pinned = ctx.model_copy(update={"model_uri": model.uri, "model_version": model.version,
                                    "dataset_uri": dataset.uri, "dataset_version": dataset.version,
                                    "shards_per_index": per_index})
    preflight(pinned, dataset, model)
    if per_index < 1:
        raise SpecError(f"shards per index must be >= 1, got {per_index}")
    return pinned, dataset, model
