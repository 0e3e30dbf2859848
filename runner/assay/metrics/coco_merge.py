"""COCOeval.accumulate over match tables in bounded memory: spill each shard's detections sorted, merge
them back one score range at a time.

COCOeval.accumulate ranks a category's kept detections over all images by score, ties in image order
(a stable sort), and takes running sums along that order. Held in memory, that is every detection of
the set at once. Here each shard's detections are sorted on their own (by category, then -score,
stably, so ties keep image and rank order) and written to a file (``Runs.add``). A category is then read
back one score range at a time: the detections of every shard inside the range, at most ``budget`` of
them, whose stable sort (shards in image order) continues the global order exactly. A range with more
is split at a score inside it; a range of one score over the budget is streamed shard by shard (its
order is the shards' own). ``_Curves`` carries COCOeval's running sums, the recall-threshold search and
the precision envelope from one range to the next with the same float operations on each detection,
so the ``precision`` and ``recall`` arrays are COCOeval's bit for bit.

Memory: the budget's detections (25 bytes each as read, about 100 with the sort and one threshold's
temporaries: some 25 MB) and per shard a sparse index (one key in every ``sparse``); never the set.
Disk: 25 bytes per kept detection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from assay.metrics.coco_match import (
    _AREA_BITS,
    AREA_LABELS,
    IOU_THRESHOLDS,
    MAX_DETS,
    RECALL_THRESHOLDS,
    MatchTable,
)

#: One spilled detection: -score (the sort key), its matched and ignored words, its rank in its cell.
RECORD = np.dtype([("key", "<f8"), ("matched", "<u8"), ("ignored", "<u8"), ("rank", "u1")])
#: Detections read back at once, at most (a range of one score over it is streamed in pieces this big).
BUDGET = 1 << 18
#: One key in this many stays in memory per shard, to find a score in its file.
SPARSE = 1024


class _Run:
    """One shard's detections of one IoU type in a file, sorted by (category, -score)."""

    def __init__(self, path: Path, table: MatchTable, num_categories: int, sparse: int):
        cells = np.lexsort((table.image, table.category))  # category, then image order
        counts = table.num_dets[cells].astype(np.int64)
        if counts.size and counts.max() > np.iinfo(RECORD["rank"]).max:
            raise ValueError("a cell keeps more detections than a record's rank holds")
        starts = np.concatenate([[0], np.cumsum(table.num_dets, dtype=np.int64)[:-1]]).astype(np.int64)
        rank = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        det = np.repeat(starts[cells], counts) + rank
        category = np.repeat(table.category[cells], counts)
        key = -table.score[det]
        order = np.lexsort((key, category))  # a stable sort: equal scores keep image, then rank, order
        records = np.empty(len(order), RECORD)
        records["key"], records["rank"] = key[order], rank[order]
        records["matched"], records["ignored"] = table.matched[det[order]], table.ignored[det[order]]
        with open(path, "wb") as f:  # not tofile: a full disk then raises with its errno, which scratch_dir names
            f.write(records.data)
        self.path, self.sparse = path, sparse
        self.bounds = np.searchsorted(category[order], np.arange(num_categories + 1), side="left")
        self.index = records["key"][::sparse].copy()  # the keys at positions 0, sparse, 2 * sparse, ...
        self.first_image = int(table.image.min()) if len(table.image) else -1
        self.last_image = int(table.image.max()) if len(table.image) else -1

    def read(self, lo: int, hi: int) -> np.ndarray:
        # pread-style, not a memory map: pages a map touched would count in the process's RSS
        return np.fromfile(self.path, RECORD, count=hi - lo, offset=lo * RECORD.itemsize)

    def position(self, lo: int, hi: int, key: float, side: str) -> int:
        """``np.searchsorted`` of ``key`` in the keys at [lo, hi), reading at most ``sparse`` of them."""
        first = -(-lo // self.sparse)  # the index entries inside [lo, hi)
        last = max(first, -(-hi // self.sparse))
        at = first + int(np.searchsorted(self.index[first:last], key, side=side))
        window_lo = lo if at == first else (at - 1) * self.sparse + 1
        window_hi = hi if at == last else min(hi, at * self.sparse + 1)
        return window_lo + int(np.searchsorted(self.read(window_lo, window_hi)["key"], key, side=side))


class Runs:
    """One IoU type's detections of every shard added, spilled to ``folder``, and their accumulate."""

    def __init__(self, folder: str | Path, num_categories: int, budget: int = BUDGET, sparse: int = SPARSE):
        self.folder, self.num_categories = Path(folder), num_categories
        self.budget, self.sparse = max(1, budget), max(1, sparse)
        self.runs: list[_Run] = []
        self.npig = np.zeros((num_categories, len(AREA_LABELS)), np.int64)
        self.has_cells = np.zeros(num_categories, bool)

    def add(self, table: MatchTable) -> None:
        """One shard's table (shards may come in any order; their images must not overlap)."""
        if not len(table.image):
            return
        np.add.at(self.npig, table.category, table.num_gt.astype(np.int64))
        self.has_cells[np.unique(table.category)] = True
        self.runs.append(_Run(self.folder / f"run-{len(self.runs)}.bin", table, self.num_categories, self.sparse))

    def accumulate(self) -> tuple[np.ndarray, np.ndarray]:
        """COCOeval.accumulate's ``precision`` [T, R, K, A, M] and ``recall`` [T, K, A, M]."""
        t_n, r_n, a_n, m_n = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_LABELS), len(MAX_DETS)
        precision = -np.ones((t_n, r_n, self.num_categories, a_n, m_n))
        recall = -np.ones((t_n, self.num_categories, a_n, m_n))
        runs = sorted(self.runs, key=lambda r: r.first_image)  # image order: it breaks ties of scores
        for before, after in zip(runs, runs[1:], strict=False):
            if before.last_image >= after.first_image:
                raise ValueError("two shards' match tables hold the same images")
        for k in np.flatnonzero(self.has_cells).tolist():  # no cell anywhere: COCOeval leaves -1
            curves = _Curves(self.npig[k])
            for chunk in self._in_order(runs, k):
                curves.add(chunk)
            curves.store(precision[:, :, k], recall[:, k])
        return precision, recall

    def _in_order(self, runs: list[_Run], k: int):
        """Category ``k``'s detections of every run in COCOeval's order, in pieces of at most ``budget``."""
        stack = [([int(r.bounds[k]) for r in runs], [int(r.bounds[k + 1]) for r in runs])]
        while stack:
            lo, hi = stack.pop()
            live = [i for i in range(len(runs)) if hi[i] > lo[i]]
            size = sum(hi[i] - lo[i] for i in live)
            if size <= self.budget:
                if size:
                    parts = np.concatenate([runs[i].read(lo[i], hi[i]) for i in live])  # runs in image order
                    yield parts[np.argsort(parts["key"], kind="stable")]
                continue
            least = min(float(runs[i].read(lo[i], lo[i] + 1)["key"][0]) for i in live)
            most = max(float(runs[i].read(hi[i] - 1, hi[i])["key"][0]) for i in live)
            if least == most:  # one score: the runs' own order, run after run
                for i in live:
                    for start in range(lo[i], hi[i], self.budget):
                        yield runs[i].read(start, min(hi[i], start + self.budget))
                continue
            pivot = self._pivot(runs, live, lo, hi, least)
            mid = [runs[i].position(lo[i], hi[i], pivot, "left") if i in live else lo[i] for i in range(len(runs))]
            stack += [(mid, hi), (lo, mid)]  # the lower keys (higher scores) first

    def _pivot(self, runs: list[_Run], live: list[int], lo: list[int], hi: list[int], least: float) -> float:
        """A key above ``least`` and at most the range's largest, near the range's median when it can."""
        sampled = np.concatenate([runs[i].index[-(-lo[i] // self.sparse):-(-hi[i] // self.sparse)] for i in live])
        median = float(np.median(sampled)) if sampled.size else least
        if median > least:
            return float(sampled[sampled >= median].min())  # a key that is there: both halves hold some
        nexts = [runs[i].position(lo[i], hi[i], least, "right") for i in live]
        return min(float(runs[i].read(n, n + 1)["key"][0]) for i, n in zip(live, nexts, strict=True) if n < hi[i])


class _Curves:
    """One category's COCOeval.accumulate, fed its detections in order, piece by piece.

    Per (maxDets, area, threshold): the running true- and false-positive counts; the recall thresholds
    found so far (COCOeval's ``searchsorted(rc, recThrs, side='left')``, a prefix of them as recall only
    grows) with, for each, the largest precision from its position on (COCOeval's envelope) so far.
    """

    def __init__(self, npig: np.ndarray):
        t_n, a_n, m_n = len(IOU_THRESHOLDS), len(AREA_LABELS), len(MAX_DETS)
        self.npig = npig
        self.tp = np.zeros((m_n, a_n, t_n), np.int64)
        self.fp = np.zeros((m_n, a_n, t_n), np.int64)
        self.found = np.zeros((m_n, a_n, t_n), np.int64)
        self.q = np.zeros((m_n, a_n, t_n, len(RECALL_THRESHOLDS)))
        self.kept = np.zeros(m_n, np.int64)

    def add(self, chunk: np.ndarray) -> None:
        low = np.uint64((1 << _AREA_BITS) - 1)
        rank, matched, ignored = chunk["rank"], chunk["matched"], chunk["ignored"]
        for m, max_det in enumerate(MAX_DETS):
            keep = rank < max_det
            kept = int(keep.sum())
            if not kept:
                continue
            self.kept[m] += kept
            whole = kept == len(chunk)  # (the usual case for the largest maxDets: no copy)
            for a in range(len(AREA_LABELS)):
                if self.npig[a] == 0:
                    continue  # no ground truth to find: COCOeval leaves -1
                # this area range's 16 bits as uint16: a quarter of the memory traffic per threshold
                shift = np.uint64(a * _AREA_BITS)
                m_bits = ((matched >> shift) & low).astype(np.uint16)
                i_bits = ((ignored >> shift) & low).astype(np.uint16)
                if not whole:
                    m_bits, i_bits = m_bits[keep], i_bits[keep]
                for t in range(len(IOU_THRESHOLDS)):
                    bit = np.uint16(1 << t)
                    dtm = (m_bits & bit) != 0
                    counted = (i_bits & bit) == 0
                    self._step(m, a, t, dtm & counted, ~dtm & counted)

    def _step(self, m: int, a: int, t: int, tps: np.ndarray, fps: np.ndarray) -> None:
        """COCOeval's cumsum, division and envelope on one piece, continuing the pieces before it."""
        tp_count, fp_count = np.cumsum(tps, dtype=np.int64), np.cumsum(fps, dtype=np.int64)
        if self.tp[m, a, t] or self.fp[m, a, t]:  # integer sums: the same counts as one cumsum over all
            tp_count += self.tp[m, a, t]
            fp_count += self.fp[m, a, t]
        self.tp[m, a, t], self.fp[m, a, t] = tp_count[-1], fp_count[-1]
        tp, fp = tp_count.astype(dtype=float), fp_count.astype(dtype=float)
        rc = tp / self.npig[a]
        pr = tp / (fp + tp + np.spacing(1))
        found, q = int(self.found[m, a, t]), self.q[m, a, t]
        if found:  # the thresholds found before: this piece comes after their positions
            np.maximum(q[:found], pr.max(), out=q[:found])
        if found == len(q):
            return
        at = np.searchsorted(rc, RECALL_THRESHOLDS[found:], side="left")
        at = at[at < len(pr)]  # thresholds past this piece's end: in a later piece, or never (they stay 0)
        if at.size:
            # pr[i] = max(pr[i:]) at the probed i: the max of each stretch between probes, then a running
            # max from the end (max picks a value: no rounding)
            starts = np.unique(at)
            envelope = np.maximum.accumulate(np.maximum.reduceat(pr, starts)[::-1])[::-1]
            q[found:found + at.size] = envelope[np.searchsorted(starts, at)]
            self.found[m, a, t] = found + at.size

    def store(self, precision: np.ndarray, recall: np.ndarray) -> None:
        """Into one category's [T, R, A, M] precision and [T, A, M] recall."""
        for m in range(len(MAX_DETS)):
            for a in np.flatnonzero(self.npig > 0).tolist():
                for t in range(len(IOU_THRESHOLDS)):
                    precision[t, :, a, m] = self.q[m, a, t]
                    # COCOeval: rc[-1], or 0 when no detection is kept
                    recall[t, a, m] = self.tp[m, a, t] / self.npig[a] if self.kept[m] else 0.0
