"""Per-shard prediction files: Parquet, one row per sample, lossless and without pickle.

Columns: ``sample_id`` (string), then per prediction field:
- arrays: ``<field>`` as a list of the array's own dtype (flattened) and ``<field>.shape``;
- RLE masks: ``<field>.rle`` (list of binary COCO counts) and ``<field>.size`` ([H, W]);
- scalars and strings: ``<field>`` as a plain column.
The field kinds and dtypes are in the file's metadata, so even empty arrays come back with their dtype
and shape. Any Parquet reader (pandas, DuckDB, Spark) can query the files.

Each results file has a small record beside it (``shard-000003.json``: its sha256, size, the model,
dataset and shard versions, and the run conditions), written after the file itself: a results file
without its record is unfinished, and one whose bytes no longer match it is damaged and recomputed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from assay import layout, storage
from assay.errors import HandlerError, IntegrityError, ObjectNotFound
from assay.handler import RLEMasks

if TYPE_CHECKING:
    import pyarrow as pa

META_KEY = b"assay"
_SUFFIXES = (".shape", ".rle", ".size")


def to_storable(value: Any) -> Any:
    """Tensors to CPU numpy; numpy scalars to Python; everything else as is."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16: keep the values in float32
            value = value.float()
        value = value.numpy()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _kind(value: Any, field: str) -> tuple[str, str | None]:
    if isinstance(value, RLEMasks):
        return "rle", None
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise HandlerError(f"prediction field {field!r} has dtype {value.dtype}; only numeric arrays are stored")
        return "array", value.dtype.str
    if isinstance(value, bool | int | float | str):
        return "scalar", type(value).__name__
    raise HandlerError(f"prediction field {field!r} is a {type(value).__name__}",
                       "return tensors, numpy arrays, scalars, strings or assay.handler.rle_encode(...) masks")


def encode_table(ids: list[str], predictions: list[dict[str, Any]], metadata: dict[str, Any]):
    """Build the Arrow table for one shard."""
    import pyarrow as pa

    rows = [{k: to_storable(v) for k, v in p.items()} for p in predictions]
    fields: dict[str, dict[str, Any]] = {}
    for row in rows:
        for name, value in row.items():
            if name == "sample_id" or name.endswith(_SUFFIXES):
                raise HandlerError(f"prediction field name {name!r} is reserved")
            kind, dtype = _kind(value, name)
            seen = fields.setdefault(name, {"kind": kind, "dtype": dtype})
            if (seen["kind"], seen["dtype"]) != (kind, dtype):
                raise HandlerError(f"prediction field {name!r} changes type between samples "
                                   f"({seen['kind']} {seen['dtype']} vs {kind} {dtype})")
    columns: dict[str, Any] = {"sample_id": pa.array(ids, pa.string())}
    for name, spec in fields.items():
        values = [row.get(name) for row in rows]
        if spec["kind"] == "array":
            dtype = np.dtype(spec["dtype"])
            columns[name] = pa.array([None if v is None else v.reshape(-1) for v in values],
                                     pa.list_(pa.from_numpy_dtype(dtype)))
            columns[f"{name}.shape"] = pa.array([None if v is None else list(v.shape) for v in values],
                                                pa.list_(pa.int64()))
        elif spec["kind"] == "rle":
            columns[f"{name}.rle"] = pa.array([None if v is None else list(v.counts) for v in values],
                                              pa.list_(pa.binary()))
            columns[f"{name}.size"] = pa.array([None if v is None else list(v.size) for v in values],
                                               pa.list_(pa.int32()))
        else:
            columns[name] = pa.array(values)
    table = pa.table(columns)
    meta = {"fields": fields, **metadata, "samples": len(ids)}
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})


def write_local(path: str | Path, ids: list[str], predictions: list[dict[str, Any]], metadata: dict[str, Any]):
    import pyarrow.parquet as pq

    if len(ids) != len(predictions):
        raise HandlerError(f"{len(predictions)} predictions for {len(ids)} samples")
    pq.write_table(encode_table(ids, predictions, metadata), str(path), compression="zstd")


def read_local(path: str | Path) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    """(sample ids, predictions, metadata) of a results file, with arrays restored exactly."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(path))
        meta = json.loads((table.schema.metadata or {})[META_KEY])
        return _decode(table, meta)
    except Exception as exc:
        raise IntegrityError(f"{path}: not a readable assay results file ({exc!r})",
                             "delete it; the ppl worker will recompute the shard") from exc


def _decode(table: pa.Table, meta: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    ids = table.column("sample_id").to_pylist()
    if not all(isinstance(i, str) for i in ids):
        raise ValueError("sample_id holds a null")
    preds: list[dict[str, Any]] = [{} for _ in ids]
    for name, spec in meta["fields"].items():
        if spec["kind"] == "array":
            _restore_arrays(table, name, np.dtype(spec["dtype"]), preds)
        elif spec["kind"] == "rle":
            counts = table.column(f"{name}.rle").to_pylist()
            sizes = table.column(f"{name}.size").to_pylist()
            for p, c, s in zip(preds, counts, sizes, strict=True):
                if c is not None:
                    p[name] = RLEMasks((int(s[0]), int(s[1])), tuple(c))
        else:
            for p, v in zip(preds, table.column(name).to_pylist(), strict=True):
                if v is not None:
                    p[name] = v
    return ids, preds, meta


def _restore_arrays(table: pa.Table, name: str, dtype: np.dtype, preds: list[dict[str, Any]]) -> None:
    col = table.column(name).combine_chunks()
    shapes = table.column(f"{name}.shape").to_pylist()
    flat = col.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    offsets = col.offsets.to_numpy()
    for i, (p, shape) in enumerate(zip(preds, shapes, strict=True)):
        if shape is not None:
            p[name] = flat[offsets[i]:offsets[i + 1]].reshape(shape).copy()


# ------------------------------------------------------------------------------- publish and verify


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def publish(path: str | Path, output_uri: str, index: int, meta: dict[str, Any],
            matches: tuple[str | Path, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Upload a results file (and its match tables, given as (path, what the record says of them)), then
    its record (the commit point); return the record."""
    record = {**meta, "sha256": _sha256(path), "bytes": Path(path).stat().st_size}
    if matches is not None:
        m_path, m_info = matches
        record["matches"] = {**m_info, "sha256": _sha256(m_path), "bytes": Path(m_path).stat().st_size}
        storage.upload(m_path, layout.matches_uri(output_uri, index))
    storage.upload(path, layout.results_uri(output_uri, index))
    storage.write_text(layout.results_record_uri(output_uri, index), json.dumps(record, sort_keys=True))
    return record


def read_record(output_uri: str, index: int) -> dict[str, Any] | None:
    """The record of shard ``index``'s results, or None when the shard has no finished results."""
    uri = layout.results_record_uri(output_uri, index)
    try:
        doc = json.loads(storage.read_bytes(uri))
    except ObjectNotFound:
        return None
    except ValueError as exc:
        raise IntegrityError(f"{uri}: damaged results record ({exc})",
                             "rerun the job: the shard is recomputed") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("sha256"), str):
        raise IntegrityError(f"{uri}: not a results record", "rerun the job: the shard is recomputed")
    return doc


def fetch_verified(output_uri: str, index: int, record: dict[str, Any], dest: str | Path,
                   matches: bool = False) -> None:
    """Download shard ``index``'s results (``matches``: its match tables) to ``dest`` and check them against
    ``record``; a mismatch names the stored object, not the local copy."""
    uri = (layout.matches_uri if matches else layout.results_uri)(output_uri, index)
    expected = record.get("matches") if matches else record
    if not isinstance(expected, dict) or not isinstance(expected.get("sha256"), str):
        raise IntegrityError(f"{layout.results_record_uri(output_uri, index)} names no match tables",
                             "rerun the job: the shard is recomputed with them")
    storage.download(uri, dest)
    size = Path(dest).stat().st_size
    if size != expected.get("bytes") or _sha256(dest) != expected["sha256"]:
        raise IntegrityError(f"{uri} is damaged: its bytes do not match the sha256 recorded when it was written",
                             "rerun the job: damaged results are recomputed")
