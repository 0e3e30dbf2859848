"""ppl's progress as ``assay run`` shows it: the bar on the terminal and the ``progress`` of status.json."""

from __future__ import annotations

from typing import Any


def bar(done: int, total: int, rate: float, width: int = 30, elapsed: float | None = None) -> str:
    """The progress line; given ``elapsed`` (ppl has ended), the time it took instead of rate and eta."""
    frac = done / total if total else 1.0
    head = f"ppl [{'#' * int(frac * width):<{width}}] {done}/{total}"
    if elapsed is not None:
        return f"{head} in {elapsed:.0f}s"
    eta = f"{(total - done) / rate:5.0f}s" if rate > 0 and done < total else "    -"
    return f"{head} {rate:6.2f} samples/s eta {eta}"


def progress_doc(done: int, total: int, rate: float) -> dict[str, Any]:
    return {"samplesDone": done, "samplesTotal": total, "percent": round(100 * done / total, 1) if total else 100.0,
            "samplesPerSecond": round(rate, 3)}
