"""bench/RESULTS.md: the latest table, the machine, and the scaling-on-paper section from measured figures."""

from __future__ import annotations

import datetime as dt

#: Assumed, not measured here: Mask R-CNN R50-FPN, native PennFudanPed size, fp16 AMP, batch 8, one
#: data-centre GPU (A100/H100 class). Replace with the GPU rows' model-only figure once one is measured.
GPU_MODEL_ONLY_IPS = 25.0
IMAGES, GPUS, SHARD_MB = 100_000, 16, 64


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
    per_shard_requests = 3  # HEAD of its results (resume check), one streamed GET of the tar, PUT of results
    rate = GPUS * per_shard_requests / shard_s
    cpu_line = (f"Measured here (CPU, {facts['spec'].min_size}px): {ppl['e2e_ips']:.2f} img/s end to end, "
                f"{efficiency:.2f} of model-only; shards of {ppl['images'] / len(manifest.shards):.1f} images "
                f"({bytes_per_image / 1e3:.0f} kB per image incl. mask and label); model load "
                f"{ppl['load_s']:.1f}s per worker.")
    op_line = ""
    if op:
        big = op[max(k for k in op if isinstance(k, int))]  # beside the sizes: failover, loadavg
        op_line = (f"- Operator: {big['requests_per_job']:.1f} API requests per job to start it and "
                   f"{big['idle_requests_per_job_s']:.2f} requests/job/s while it waits (measured at "
                   f"{big['jobs']} jobs on a real API server, from its audit log).\n")
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
- S3 request rate: per shard 1 HEAD + 1 streamed GET of the tar + 1 PUT of results (pods write no
  progress objects: the operator counts finished indexes): about {rate:.1f} requests/s for the whole job, far below S3's per-prefix limits
  (3,500 PUT / 5,500 GET per second); cmp adds {2 * shards} GETs (labels + results, or match tables, per shard).
{op_line}"""


#: Why a target may fall short, keyed by the start of its row's target; render() prints the entries
#: whose rows are not met in this run (and NOTES always), so RESULTS.md never explains a met target.
GAPS = {
    "2 vs the seed": """**2, vs the seed's ppl (CPU).** The seed's overheads (model rebuilt per batch, one image at a time,
  float masks as JSON lists) cost about 0.4 s per image; on 2 CPU cores the Mask R-CNN forward pass
  alone costs about 0.45 s per image, so no runner can be more than about 2x faster here. The 5x target
  is a GPU figure, where the forward pass takes tens of ms and the seed's per-image overheads dominate;
  it is not measured because no GPU was lent to this run.""",
    "3 cmp speed": """**3, cmp speed.** faster-coco-eval's evaluate/accumulate alone is about 3.2x faster than
  pycocotools with identical stats; the rest is the evaluator's per-sample conversion to COCO records
  (Python dicts per detection).""",
    "5 dataset build (local": """**5, dataset build into a local folder.** The build decodes every mask PNG to derive COCO labels
  (RLE, boxes, areas), hashes and writes tars; a plain copy of the same 54 MB from the page cache is a
  single memory-bound pass, so the label work dominates.""",
    "22 ppl matching": """**22, matching in ppl.** pycocotools' evaluateImg per image and category in the ppl worker;
  the share is of the CPU bench model's ppl time per image measured in the same run.""",
    "7 operator: API requests": """**7, operator scale.** Requests per job grew with the number of jobs: see the
  per-kind counts in the row's detail (a job reconciled more often while the burst settles, e.g. by its
  pods' watch events, writes more).""",
}
NOTES = """- **3, cmp memory.** Flat in the number of shards (the target). cmp reads the ppl workers' match tables
  (issue 22), not the predictions, one shard at a time, and merges them from sorted runs on scratch disk
  (25 bytes per detection) read back at most 262,144 detections at a time: its memory does not grow
  with the detections, only with the sample ids metrics.json lists.
- **22, cmp at scale.** Up to 100,000 images end to end (ppl's matching per shard, then cmp in a fresh
  process); at 1,000,000 from generated match tables. Peers run single-process on all images in the same
  run and are extrapolated linearly where they would take over 200 s; each row says which.
- **5, S3.** Into S3 (moto) the build is faster than a plain copy because it uploads a few large shards
  instead of hundreds of small files.
- **6, GPU options.** Implemented (batch size, fp16/bf16 autocast, channels_last, torch.compile, pinned
  host-to-device copies on a side stream, decoding in threads) but not measured: no GPU was lent.
"""


def gaps(rows) -> str:
    out = [f"- {text}" for key, text in GAPS.items()
           if any(r.target.startswith(key) and r.met is False for r in rows)]
    return "\n".join(out) + ("\n" if out else "") + NOTES


def render(table: str, facts: dict, rows=()) -> str:
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

## Targets not met, and notes

{gaps(rows)}
## Scaling on paper: 100,000 images on 16 GPUs

{scaling(facts)}"""
