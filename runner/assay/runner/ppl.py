"""The ppl (inference) worker: predict every sample of this worker's shards, one results file per shard.

The model is loaded once per worker. A background thread downloads and verifies shards and decodes
samples (handler.decode, in a small thread pool) into batches while the model predicts the previous
ones. A shard whose results file already exists and matches this model, dataset and shard is skipped,
so a killed worker that is started again recomputes only unfinished shards.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assay import layout, logs, packages, results, runrecord, shards, storage, verified
from assay.errors import HandlerError, IntegrityError, ObjectNotFound
from assay.metrics import coco_match, coco_tables, get_evaluator
from assay.runner.inputs import load_pinned, run_conditions
from assay.spec import RunContext, env_seconds

if TYPE_CHECKING:
    import torch

    from assay.handler import Handler


log = logging.getLogger("assay.ppl")

#: Seconds between progress reports to `assay run` (a pod reports none: the operator counts finished indexes).
PROGRESS_INTERVAL = env_seconds("ASSAY_PROGRESS_INTERVAL", 2.0)


@dataclass
class PplSummary:
    shards_total: int
    shards_skipped: int
    shards_done: int
    samples_done: int


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from assay.errors import SpecError

        raise SpecError("spec.ppl.device is cuda but no GPU is visible", "use device: auto or cpu, or request a GPU")
    return torch.device(name)


def results_match(ctx: RunContext, dataset: shards.DatasetManifest, model: packages.ModelManifest,
                  settings_hash: str, index: int) -> bool:
    """True when the output holds complete, undamaged results of shard ``index`` for this run."""
    try:
        record = results.read_record(ctx.output_uri, index)
    except IntegrityError as exc:
        log.warning("shard %d: %s; recomputing", index, exc.message)
        return False
    if record is None or verified.mismatch(record, dataset, model, index, settings_hash):
        return False
    if _needs_matches(ctx, model) and (record.get("matches") or {}).get("version") != coco_match.TABLE_VERSION:
        log.info("shard %d: results have no match tables of version %d; recomputing", index,
                 coco_match.TABLE_VERSION)
        return False
    with storage.scratch_dir("check") as tmp:
        try:
            results.fetch_verified(ctx.output_uri, index, record, Path(tmp) / "r.parquet")
            if _needs_matches(ctx, model):
                results.fetch_verified(ctx.output_uri, index, record, Path(tmp) / "m.parquet", matches=True)
        except (IntegrityError, ObjectNotFound) as exc:
            log.warning("shard %d: %s; recomputing", index, exc.message)
            return False
    return True


def _needs_matches(ctx: RunContext, model: packages.ModelManifest) -> bool:
    """The coco evaluator's per-image matching runs here, beside the predictions (cmp only merges)."""
    return (ctx.evaluator or model.evaluator) == "coco"


class _Progress:
    def __init__(self, ctx: RunContext, samples_total: int, shards_total: int,
                 report: Callable[[dict[str, Any]], None] | None):
        self.ctx, self.samples_total, self.shards_total, self.report = ctx, samples_total, shards_total, report
        self.samples_done = self.shards_done = self.computed = 0
        self.started = time.monotonic()
        self.last_write = 0.0

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.computed / elapsed if elapsed > 0 else 0.0

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.report is None or (not force and now - self.last_write < PROGRESS_INTERVAL):
            return
        self.last_write = now
        doc = {"worker": self.ctx.worker_index, "samplesDone": self.samples_done,
               "samplesTotal": self.samples_total, "samplesPerSecond": round(self.rate(), 3),
               "shardsDone": self.shards_done, "shardsTotal": self.shards_total,
               "updatedAt": datetime.now(UTC).isoformat(timespec="seconds")}
        self.report(doc)


_END = object()


def _map_tensors(value: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to every torch tensor in nested lists, tuples and dicts; other values pass through."""
    if hasattr(value, "pin_memory") and hasattr(value, "record_stream"):
        return fn(value)
    if isinstance(value, list | tuple):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


class _DeviceStager:
    """CUDA only (spec.ppl.pinMemory): pin each decoded batch and copy it to the GPU on a side stream.

    The copy is issued from the prefetch thread, so it overlaps the previous batch's compute; the main
    thread makes its stream wait for the copy's event before predict, and marks the tensors as used
    by its stream so the caching allocator does not hand their memory out early. The handler's own
    ``.to(device)`` then finds the tensors already there (a no-op).
    """

    def __init__(self, device: torch.device):
        import torch

        self.torch, self.device = torch, device
        self.stream = torch.cuda.Stream(device)

    def stage(self, batch: list[Any]) -> tuple[list[Any], list[Any], Any]:
        torch = self.torch
        host = _map_tensors(batch, lambda t: t.pin_memory())
        with torch.cuda.stream(self.stream):
            moved = _map_tensors(host, lambda t: t.to(self.device, non_blocking=True))
            event = torch.cuda.Event()
            event.record(self.stream)
        return moved, host, event  # host stays referenced until the copy is awaited

    def ready(self, staged: tuple[list[Any], list[Any], Any]) -> list[Any]:
        moved, _host, event = staged
        current = self.torch.cuda.current_stream(self.device)
        current.wait_event(event)
        _map_tensors(moved, lambda t: t.record_stream(current))
        return moved


def _produce(dataset: shards.DatasetManifest, todo: list[int], handler: Handler, batch_size: int,
             out: queue.Queue, stop: threading.Event, decode_threads: int,
             stager: _DeviceStager | None = None) -> None:
    """Background thread: fetch each shard, decode its samples, put ("batch", shard, ids, inputs) items."""

    def decode(index: int, sample: shards.Sample):
        try:
            return handler.decode(sample)
        except (Exception, SystemExit) as exc:
            image = sample.image_or_none()
            what = f"its {image[0]} file ({len(image[1])} bytes) does not decode" if image and isinstance(
                exc, OSError | ValueError | SyntaxError) else "handler decode() failed"
            raise HandlerError(f"dataset {dataset.name}@{dataset.version} shard {index}, sample {sample.id!r}: "
                               f"{what}: {exc!r}",
                               "fix or drop that sample in the source data and build the dataset again (`assay "
                               "dataset check` lists every such sample), or fix the handler's decode()") from exc

    def decoded(pool: ThreadPoolExecutor, index: int, chunk: list[shards.Sample]):
        batch = list(pool.map(lambda sample: decode(index, sample), chunk))
        return stager.stage(batch) if stager is not None else batch

    try:
        with ThreadPoolExecutor(decode_threads, thread_name_prefix="assay-decode") as pool:
            for index in todo:
                uri = dataset.shard_uri(index)
                with shards.fetch_shard(dataset, index) as path:
                    chunk: list[shards.Sample] = []
                    for sample in shards.iter_shard_samples(path, uri):
                        chunk.append(sample)
                        if len(chunk) == batch_size:
                            out.put(("batch", index, [s.id for s in chunk], decoded(pool, index, chunk)))
                            chunk = []
                        if stop.is_set():
                            return
                    if chunk:  # the last, shorter batch is predicted too (the seed dropped it)
                        out.put(("batch", index, [s.id for s in chunk], decoded(pool, index, chunk)))
                out.put(("end", index, None, None))
        out.put((_END, None, None, None))
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        out.put(("error", None, None, exc))


def run(ctx: RunContext, loaded: dict | None = None,
        report: Callable[[dict[str, Any]], None] | None = None) -> PplSummary:
    """Predict the shards of work item ``ctx.worker_index``. ``loaded`` keeps the handler between calls
    of one process (a local worker takes item after item and loads the model once); ``report`` gets the
    item's progress every ASSAY_PROGRESS_INTERVAL seconds (`assay run` passes its process channel)."""
    dataset, model = load_pinned(ctx)
    ident = runrecord.identity(ctx, model, dataset)
    runrecord.claim(ctx.output_uri, ident)
    mine = layout.shards_of_index(len(dataset.shards), ctx.worker_index, ctx.shards_per_index)
    progress = _Progress(ctx, sum(dataset.shards[i].samples for i in mine), len(mine), report)
    todo = []
    for i in mine:
        if results_match(ctx, dataset, model, ident.settings_hash, i):
            progress.samples_done += dataset.shards[i].samples
            progress.shards_done += 1
            log.info("shard %d: results exist and match, skipped", i)
        else:
            todo.append(i)
    log.info("work item %d: shards %s (%d to compute), dataset %s@%s, model %s@%s", ctx.worker_index,
             _span(mine), len(todo), dataset.name, dataset.version, model.name, model.version)
    progress.write(force=True)
    if todo:
        _predict_shards(ctx, dataset, model, ident, todo, progress, {} if loaded is None else loaded)
    progress.write(force=True)
    return PplSummary(len(mine), len(mine) - len(todo), len(todo), progress.computed)


def _span(shards: list[int]) -> str:
    return f"{shards[0]}-{shards[-1]}" if len(shards) > 1 else (str(shards[0]) if shards else "none")


def _load_handler(ctx: RunContext, model: packages.ModelManifest, loaded: dict):
    if model.version in loaded:
        return loaded[model.version]
    device = pick_device(ctx.device)
    package_dir = packages.unpack(model)
    handler = packages.load_handler_class(model, package_dir)()
    t0 = time.monotonic()
    try:
        handler.load(package_dir, device)
    except (Exception, SystemExit) as exc:
        raise HandlerError(f"handler {model.handler}.load() failed: {exc!r}",
                           "check the weight files and the handler code of the model package") from exc
    log.info("model %s loaded on %s in %.1fs", model.name, device, time.monotonic() - t0)
    _apply_model_options(handler, device, ctx)
    loaded[model.version] = handler, device
    return handler, device


def _predict_shards(ctx: RunContext, dataset: shards.DatasetManifest, model: packages.ModelManifest,
                    ident: runrecord.RunIdentity, todo: list[int], progress: _Progress, loaded: dict) -> None:
    handler, device = _load_handler(ctx, model, loaded)
    import torch

    meta = {"dataset_version": dataset.version, "model_version": model.version, "worker": ctx.worker_index,
            "settings_hash": ident.settings_hash,
            "conditions": run_conditions(str(device), torch.get_num_threads(), ctx)}
    autocast = _autocast(device, ctx.precision)
    stager = _DeviceStager(device) if device.type == "cuda" and ctx.pin_memory else None
    q: queue.Queue = queue.Queue(maxsize=max(1, ctx.prefetch))
    stop = threading.Event()
    threads = ctx.decode_threads or max(1, min(4, (os.cpu_count() or 2) // max(1, ctx.worker_count)))
    # in a copy of this context: it fetches shards from the store the caller's storage.using names
    producer = threading.Thread(target=contextvars.copy_context().run, name="assay-prefetch", daemon=True,
                                args=(_produce, dataset, todo, handler, ctx.batch_size, q, stop, threads, stager))
    producer.start()
    ids: list[str] = []
    preds: list[dict[str, Any]] = []
    try:
        while True:
            kind, index, batch_ids, payload = q.get()
            if kind is _END:
                break
            if kind == "error":
                raise payload
            if kind == "end":
                _write_shard(ctx, dataset, meta, index, ids, preds, _needs_matches(ctx, model))
                progress.shards_done += 1
                progress.write(force=True)
                log.info("shard %d: %d samples written (%.2f samples/s)", index, len(ids), progress.rate())
                logs.checkpoint()  # the log so far reaches the store even if the pod is killed later
                ids, preds = [], []
                continue
            if stager is not None:
                payload = stager.ready(payload)
            with autocast:
                out = _predict(handler, payload)
            if len(out) != len(batch_ids):
                raise HandlerError(f"{model.handler}.predict returned {len(out)} predictions for "
                                   f"{len(batch_ids)} inputs (shard {index})", "return one dict per input")
            ids.extend(batch_ids)
            preds.extend({k: results.to_storable(v) for k, v in p.items()} for p in out)
            progress.samples_done += len(batch_ids)
            progress.computed += len(batch_ids)
            progress.write()
    finally:
        stop.set()


def _apply_model_options(handler: Handler, device: torch.device, ctx: RunContext) -> None:
    """spec.ppl.channelsLast and spec.ppl.compile act on ``handler.model`` when it is a torch module."""
    if not (ctx.channels_last or ctx.compile):
        if ctx.pin_memory and device.type != "cuda":
            log.debug("pinMemory has no effect on %s", device)
        return
    import torch

    model = getattr(handler, "model", None)
    if not isinstance(model, torch.nn.Module):
        log.warning("channelsLast/compile ignored: the handler has no `model` attribute holding a torch module")
        return
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ctx.compile:
        if device.type != "cuda":
            log.warning("torch.compile on %s: expect a long first batch and little gain", device)
        model = torch.compile(model)
    handler.model = model
    log.info("model options: channels_last=%s compile=%s", ctx.channels_last, ctx.compile)


def _predict(handler: Handler, batch: list[Any]):
    try:
        out = handler.predict(batch)
    except (Exception, SystemExit) as exc:
        raise HandlerError(f"handler predict() failed: {exc!r}") from exc
    if not isinstance(out, list | tuple) or not all(isinstance(p, dict) for p in out):
        raise HandlerError("handler predict() must return a list of dicts, one per input")
    return out


def _autocast(device: torch.device, precision: str):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _write_shard(ctx: RunContext, dataset: shards.DatasetManifest, meta: dict[str, Any], index: int,
                 ids: list[str], preds: list[dict[str, Any]], needs_matches: bool) -> None:
    info = dataset.shards[index]
    if len(ids) != info.samples or len(set(ids)) != len(ids):
        raise IntegrityError(f"shard {index}: read {len(ids)} samples ({len(set(ids))} distinct), "
                             f"manifest says {info.samples}", "the shard is corrupt; rebuild the dataset")
    meta = {**meta, "shard": info.name, "shard_sha256": info.sha256}
    with storage.scratch_dir("results") as tmp:
        path = Path(tmp) / f"{info.name}.parquet"
        results.write_local(path, ids, preds, meta)
        matches = None
        if needs_matches:
            matches = Path(tmp) / f"{info.name}.matches.parquet", {"version": coco_match.TABLE_VERSION}
            _write_matches(matches[0], dataset, index, ids, preds, meta)
        results.publish(path, ctx.output_uri, index, {**meta, "samples": len(ids)}, matches)


def _write_matches(path: Path, dataset, index: int, ids: list[str], preds: list[dict[str, Any]],
                   meta: dict[str, Any]) -> None:
    """The shard's coco match tables: COCOeval's per-image matching of its labels and predictions, with
    run-wide image positions (the samples of the shards before this one come first)."""
    t0 = time.monotonic()
    evaluator = get_evaluator("coco", dataset.label_schema)
    by_id = dict(zip(ids, preds, strict=True))
    for record in shards.read_labels(dataset, index):
        evaluator.update(record["id"], record["label"], by_id[record["id"]])
    offset = sum(s.samples for s in dataset.shards[:index])
    coco_tables.write(path, evaluator.match(offset), meta)
    log.info("shard %d: coco matching in %.2fs", index, time.monotonic() - t0)
