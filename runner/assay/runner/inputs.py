"""A run's inputs, pinned: the dataset and model manifests a ppl worker or cmp reads, checked against
the versions the run was pinned to at its start (``RunContext.model_version`` / ``dataset_version``)."""

from __future__ import annotations

import platform

from assay import packages, shards
from assay.errors import IntegrityError
from assay.spec import RunContext


def load_pinned(ctx: RunContext) -> tuple[shards.DatasetManifest, packages.ModelManifest]:
    dataset = shards.load_manifest(ctx.dataset_uri)
    model = packages.load_manifest(ctx.model_uri)
    for what, got, want, uri in (("dataset", dataset.version, ctx.dataset_version, ctx.dataset_uri),
                                 ("model", model.version, ctx.model_version, ctx.model_uri)):
        if want and got != want:
            raise IntegrityError(f"the {what} at {uri} is version {got}, but this run is pinned to {want}",
                                 f"the {what} changed after the run started; rerun the job to pin the new one "
                                 "(into a new output, or with --overwrite)")
    return dataset, model


def run_conditions(device: str, threads: int, ctx: RunContext) -> dict[str, str | int]:
    """What produced a shard's predictions besides model and data: versions, device, threads, batch size."""
    import torch
    import torchvision

    from assay import __version__

    return {"assay": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "device": device, "threads": threads,
            "precision": ctx.precision, "batchSize": ctx.batch_size}
