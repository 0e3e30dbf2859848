"""bench/RESULTS.md: the latest table, the machine, and the scaling-on-paper section from measured figures."""

from __future__ import annotations

import datetime as dt

#: Assumed, not measured here: Mask R-CNN R50-FPN, native PennFudanPed size, fp16 AMP, batch 8, one
#: data-centre GPU (A100/H100 class). Replace with the GPU rows' model-only figure once one is measured.
GPU_MODEL_ONLY_IPS = 25.0
IMAGES, GPUS, SHARD_MB = 100_000, 16, 64
PROGRESS_PUTS_PER_S = 0.5  # one progress object every 2 s (ASSAY_PROGRESS_INTERVAL)


def scaling(facts: dict) -> str:
    ppl, op = facts.get("ppl"), facts.get("operator")
    if not ppl:
        return "(the ppl benchmark did not run)"
    manifest = ppl["manifest"]
    bytes_per_image = sum(s.bytes for s in manifest.shards) / ppl["images"]
    per_shard = int(SHARD_MB * 2**20 // bytes_per_image)
    shards = -(-IMAGES // per_shard)
    efficiency = ppl["e2e_ips"] / ppl["model_only_ips"]
    ips = GPU_MODEL_ONLY_IPS * efficiency
    shard_s = per_shard / ips
    wall = IMAGES / (GPUS * ips)
    gets_per_shard = 1 + SHARD_MB // 8 + 1  # HEAD results, 8 MiB ranged GETs of the tar, GET labels (cmp side)
    rate = GPUS * ((gets_per_shard + 1) / shard_s + PROGRESS_PUTS_PER_S)
    cpu_line = (f"Measured here (CPU, {facts['spec'].min_size}px): {ppl['e2e_ips']:.2f} img/s end to end, "
                f"{efficiency:.2f} of model-only; shards of {ppl['images'] / len(manifest.shards):.1f} images "
                f"({bytes_per_image / 1e3:.0f} kB per image incl. mask and label); model load "
                f"{ppl['load_s']:.1f}s per worker.")
    op_line = ""
    if op:
        big = op[max(op)]
        op_line = (f"- Operator: {big['requests_per_job']:.1f} API requests per job to start it and "
                   f"{big['progress_requests_per_job_s']:.2f} requests/job/s while running (measured at "
                   f"{big['jobs']} jobs): one job of 16 workers is negligible load.\n")
    return f"""{cpu_line}

Assumptions (named, not measured here): one GPU runs Mask R-CNN R50-FPN at native size with fp16 AMP
at {GPU_MODEL_ONLY_IPS:.0f} img/s model-only; the end-to-end efficiency measured here on CPU
({efficiency:.2f}) holds on the GPU (decode is ~10 ms/image on one core, so with >= 4 decode threads per
GPU decoding stays off the critical path up to ~400 img/s); images are PennFudanPed-like
({bytes_per_image / 1e3:.0f} kB); S3 serves each worker >= 100 MB/s; shards are {SHARD_MB} MiB.

- Shard size: {SHARD_MB} MiB = {per_shard} images; {IMAGES:,} images = {shards} shards.
- Workers: {GPUS} (one per GPU, spec.ppl.workers: {GPUS}), each ~{shards / GPUS:.0f} shards.
- Expected wall time: {IMAGES:,} / ({GPUS} x {ips:.1f} img/s) = {wall / 60:.1f} min of ppl, plus model
  load (~{ppl['load_s']:.0f} s here; longer with CUDA init) and cmp (5,000 images took
  {facts.get('cmp', {}).get('ours_s', float('nan')):.1f} s here: ~{facts.get('cmp', {}).get('ours_s', 0) * IMAGES / 5000 / 60:.1f} min for {IMAGES:,}, linear).
- A shard takes {shard_s:.0f} s on one GPU; the {SHARD_MB} MiB download takes < 1 s at 100 MB/s and
  is prefetched while the previous shard computes.
- S3 request rate: per shard 1 HEAD + {SHARD_MB // 8} ranged GETs + 1 PUT of results, plus a progress PUT
  every 2 s per worker: about {rate:.1f} requests/s for the whole job, far below S3's per-prefix limits
  (3,500 PUT / 5,500 GET per second); cmp adds {2 * shards} GETs (labels + results per shard).
{op_line}"""


def render(table: str, facts: dict) -> str:
    m = facts["machine"]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    spec = facts["spec"]
    return f"""# Benchmark results

Latest run of `python -m bench` ({when}, {facts['seconds'] / 60:.1f} min).

Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']},
GPU: {m['gpu']}. The machine is shared with other test runs: only the ratios, each taken from two
measurements made side by side in the same run, mean anything.

Model: torchvision Mask R-CNN R50-FPN, randomly initialised with a fixed seed (no weights can be
downloaded), at a reduced input size (min_size {spec.min_size}, max_size {spec.max_size}) on CPU.
Throughput does not depend on training, but an untrained head scores nearly every proposal high, so
detections are capped at {spec.detections} per image (score threshold {spec.score_thresh}) to resemble a
trained pedestrian model's output; RLE, mask pasting and the results size depend on that count.

{table}

## Scaling on paper: 100,000 images on 16 GPUs

{scaling(facts)}"""
