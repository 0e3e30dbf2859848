"""The match-table file: one shard's ``CocoMatches`` as Parquet (docs/formats.md, "Match tables").

One row per cell (image, category) and IoU type: ``iou_type``, ``image``, ``category``, ``gt_all``,
``gt_small``, ``gt_medium``, ``gt_large`` (non-ignored ground truth per area range), and the cell's kept
detections as lists ``score`` (float64), ``matched`` and ``ignored`` (uint64 bit words). The rest
(sample ids, image offset, counts, presence) is JSON in the file's metadata under ``assay``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from assay.metrics.coco_match import AREA_LABELS, TABLE_VERSION, CocoMatches, MatchTable

FORMAT = "assay-coco-matches"
META_KEY = b"assay"
_GT_COLUMNS = tuple(f"gt_{a}" for a in AREA_LABELS)


def write(path: str | Path, matches: CocoMatches, metadata: dict[str, Any]) -> None:
    """Write ``matches`` to ``path``; ``metadata`` (the run identity of the results file) goes along."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = []
    for iou_type, t in matches.tables.items():
        offsets = pa.array(np.concatenate([[0], np.cumsum(t.num_dets, dtype=np.int64)]).astype(np.int32))
        columns = {"iou_type": pa.array([iou_type] * len(t.image), pa.string()),
                   "image": pa.array(t.image), "category": pa.array(t.category),
                   **{c: pa.array(t.num_gt[:, a]) for a, c in enumerate(_GT_COLUMNS)},
                   "score": pa.ListArray.from_arrays(offsets, pa.array(t.score)),
                   "matched": pa.ListArray.from_arrays(offsets, pa.array(t.matched)),
                   "ignored": pa.ListArray.from_arrays(offsets, pa.array(t.ignored))}
        parts.append(pa.table(columns))
    meta = {**metadata, "format": FORMAT, "version": TABLE_VERSION, "iou_types": list(matches.tables),
            "image_offset": matches.image_offset, "sample_ids": matches.sample_ids,
            "num_ground_truth": {str(k): v for k, v in matches.num_ground_truth.items()},
            "num_detections": matches.num_detections, "unknown_category_dets": matches.unknown_category_dets,
            "presence": matches.presence}
    table = pa.concat_tables(parts) if parts else _empty()
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    pq.write_table(table, str(path), compression="zstd")


def read(path: str | Path) -> tuple[CocoMatches, dict[str, Any]]:
    """(matches, metadata) of a match-table file; ValueError when it is not one of this version."""
    import pyarrow.parquet as pq

    # ParquetFile, not read_table: that one imports pyarrow.dataset, a fifth of cmp's time at 5,000 images
    table = pq.ParquetFile(str(path)).read()
    meta = json.loads((table.schema.metadata or {})[META_KEY])
    if meta.get("format") != FORMAT or meta.get("version") != TABLE_VERSION:
        raise ValueError(f"not an {FORMAT} file of version {TABLE_VERSION}")
    kinds = np.asarray(table.column("iou_type").to_numpy(zero_copy_only=False), dtype=object)
    tables = {}
    for iou_type in meta["iou_types"]:
        rows = table.slice(*_rows_of(kinds, iou_type))
        lists = {c: rows.column(c).combine_chunks() for c in ("score", "matched", "ignored")}
        t = MatchTable(
            image=rows.column("image").to_numpy().astype(np.int64),
            category=rows.column("category").to_numpy().astype(np.int32),
            num_dets=np.diff(lists["score"].offsets.to_numpy()).astype(np.int32),
            num_gt=np.stack([rows.column(c).to_numpy() for c in _GT_COLUMNS], axis=1).astype(np.int32).reshape(
                -1, len(AREA_LABELS)),
            score=lists["score"].values.to_numpy().astype(np.float64),
            matched=lists["matched"].values.to_numpy().astype(np.uint64),
            ignored=lists["ignored"].values.to_numpy().astype(np.uint64))
        t.check()
        tables[iou_type] = t
    matches = CocoMatches(
        image_offset=int(meta["image_offset"]), sample_ids=list(meta["sample_ids"]), tables=tables,
        num_ground_truth={int(k): int(v) for k, v in meta["num_ground_truth"].items()},
        num_detections=int(meta["num_detections"]), unknown_category_dets=int(meta["unknown_category_dets"]),
        presence={k: list(v) for k, v in meta["presence"].items()})
    return matches, meta


def _rows_of(kinds: np.ndarray, iou_type: str) -> tuple[int, int]:
    """(offset, length) of an IoU type's rows: ``write`` puts each type's rows together (a slice needs
    no pyarrow.compute, which a filter would import)."""
    at = np.flatnonzero(kinds == iou_type)
    if at.size and at[-1] - at[0] + 1 != at.size:
        raise ValueError(f"the {iou_type} rows are not together")
    return (int(at[0]), int(at.size)) if at.size else (0, 0)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a match-table file alone (sample ids, image offset, run identity); ValueError when
    it is not one of this version."""
    import pyarrow.parquet as pq

    meta = json.loads((pq.read_schema(str(path)).metadata or {})[META_KEY])
    if meta.get("format") != FORMAT or meta.get("version") != TABLE_VERSION:
        raise ValueError(f"not an {FORMAT} file of version {TABLE_VERSION}")
    ids = meta["sample_ids"]
    if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise ValueError("sample_ids is not a list of strings")
    return meta


def _empty():
    import pyarrow as pa

    return pa.table({"iou_type": pa.array([], pa.string()), "image": pa.array([], pa.int64()),
                     "category": pa.array([], pa.int32()), **{c: pa.array([], pa.int32()) for c in _GT_COLUMNS},
                     **{c: pa.array([], pa.list_(t)) for c, t in (("score", pa.float64()), ("matched", pa.uint64()),
                                                                   ("ignored", pa.uint64()))}})
