"""Target 1: end-to-end ppl throughput over real shards vs model-only throughput (same model and batch).

End to end is ``assay.runner.ppl.run``: fetch and verify each shard, decode PNGs in background threads,
batch, predict, RLE-encode, write one Parquet file per shard. Model-only is the same model called on the
same images, already decoded and converted to float in memory, in the same batch size. The one-time
model load is timed apart and left out of both (it is paid once per worker, not per image). Model-only
is measured before and after the end-to-end run and averaged, to cancel drift on a shared machine.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import ModelSpec, Row, Timer, dataset, model_package

BATCH = 4


def _model_only(handler, inputs, batch: int, precision: str = "fp32") -> float:
    import contextlib

    import torch

    device = next(handler.model.parameters()).device
    floats = [x.to(device).float().div_(255) for x in inputs]
    amp = (torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
           if precision != "fp32" else contextlib.nullcontext())
    with torch.inference_mode(), amp, Timer() as t:
        for i in range(0, len(floats), batch):
            handler.model(floats[i:i + batch])
        if device.type == "cuda":
            torch.cuda.synchronize()
    return len(floats) / t.seconds


def run(work: Path, spec: ModelSpec, data_filter: str, volume_size: int, device: str = "cpu", batch: int = BATCH,
        **options) -> tuple[list[Row], dict]:
    """Model-only and end-to-end images/s; ``options`` are RunContext fields (precision, channels_last, ...)."""
    import torch

    from assay import packages, shards
    from assay.runner import ppl
    from assay.spec import RunContext

    store = str(work / "store")
    manifest = dataset(store, data_filter, volume_size)
    model, _ = model_package(spec, work, store)
    # warm the package cache (unpacking is once per worker per model version, not per image)
    handler = packages.load_handler_class(model, packages.unpack(model))()
    handler.load(packages.unpack(model), torch.device(device))
    samples = []
    for i in range(len(manifest.shards)):
        with shards.fetch_shard(manifest, i) as path:
            samples.extend(shards.iter_shard_samples(path, manifest.shard_uri(i)))
    inputs = [handler.decode(s) for s in samples]
    precision = options.get("precision", "fp32")
    _model_only(handler, inputs[:batch], batch, precision)  # warm-up (allocator, first-call paths)

    model_only_a = _model_only(handler, inputs, batch, precision)
    load_seconds = []
    original = ppl._load_handler

    def timed_load(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            load_seconds.append(time.perf_counter() - t0)

    ppl._load_handler = timed_load
    try:
        ctx = RunContext(job_name="bench", model_uri=model.uri, dataset_uri=manifest.uri,
                         output_uri=str(work / "out"), batch_size=batch, device=device, **options)
        with Timer() as t:
            summary = ppl.run(ctx)
    finally:
        ppl._load_handler = original
    model_only_b = _model_only(handler, inputs, batch, precision)
    e2e = summary.samples_done / (t.seconds - sum(load_seconds))
    model_only = (model_only_a + model_only_b) / 2
    ratio = e2e / model_only
    info = {"images": len(samples), "shards": len(manifest.shards), "e2e_ips": e2e, "model_only_ips": model_only,
            "model_only_runs": [model_only_a, model_only_b], "load_s": sum(load_seconds),
            "wall_s": t.seconds, "results_dir": work / "out" / "results", "store": store,
            "manifest": manifest, "model": model, "samples": samples, "handler": handler}
    rows = [Row("1 ppl efficiency (CPU)", "e2e / model-only images/s", ratio, ">= 0.90", ratio >= 0.90,
                f"{e2e:.3f} vs {model_only:.3f} img/s; {len(samples)} images in {len(manifest.shards)} shards, "
                f"batch {batch}, R50-FPN at {spec.min_size}px")]
    return rows, info
