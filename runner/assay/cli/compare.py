"""`assay compare JOB_A JOB_B`: metric deltas and per-sample regressions of two finished runs."""

from __future__ import annotations

from typing import Any

import click

from assay.cli._output import emit, format_option, table


@click.command()
@click.argument("job_a")
@click.argument("job_b")
@click.option("--allow-different-datasets", is_flag=True,
              help="Compare runs on different dataset versions (per-sample: the ids both have).")
@click.option("--top", type=click.IntRange(0, 100000), default=10, show_default=True,
              help="Regressions to list (all are counted).")
@format_option
def compare(job_a: str, job_b: str, allow_different_datasets: bool, top: int, fmt: str) -> None:
    """Compare the finished runs JOB_A (before) and JOB_B (after): every summary metric with its delta,
    and the samples whose per-sample score dropped, worst first.

    JOB_A and JOB_B are job manifests or output folders/URIs. Runs of different evaluators are refused;
    runs on different dataset versions too, unless --allow-different-datasets.

    Example: assay compare baseline/job.yaml candidate/job.yaml --format json
    """
    from assay.report.compare import compare_runs

    doc = compare_runs(job_a, job_b, allow_different_datasets, top)
    emit(fmt, doc, _human(doc))


def _human(doc: dict[str, Any]) -> str:
    def who(side: dict[str, Any]) -> str:
        m, d = side["model"], side["dataset"]
        return f"{m['name']}@{m['version']} on {d['name']}@{d['version']} ({side['ref']})"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:+.4f}"

    rows = [{"metric": m["name"], "a": "-" if m["a"] is None else f"{m['a']:.4f}",
             "b": "-" if m["b"] is None else f"{m['b']:.4f}",
             "delta": "0" if m["change"] == "same" else num(m["delta"]), "change": m["change"]}
            for m in doc["metrics"]]
    lines = [f"A: {who(doc['a'])}", f"B: {who(doc['b'])}", ""]
    if not doc["sameDataset"]:
        lines.insert(2, "warning: different dataset versions (--allow-different-datasets)")
    lines.append(table(rows, ["metric", "a", "b", "delta", "change"]))
    s = doc["samples"]
    if s is None:
        lines.append("\nno per-sample score for this evaluator: metrics only")
        return "\n".join(lines)
    lines.append(f"\nper-sample score: {doc['perSampleScore']}")
    lines.append(f"{s['regressed']} of {s['compared']} samples regressed, {s['improved']} improved, "
                 f"{s['unchanged']} unchanged" + (f"; {s['onlyInA']} only in A, {s['onlyInB']} only in B"
                                                  if s["onlyInA"] or s["onlyInB"] else ""))
    if doc["regressions"]:
        regs = [{"id": r["id"], "a": f"{r['a']:.4f}", "b": f"{r['b']:.4f}", "drop": f"{r['drop']:.4f}"}
                for r in doc["regressions"]]
        more = s["regressed"] - len(regs)
        lines.append(table(regs, ["id", "a", "b", "drop"]) + (f"\n({more} more; --top to list them)" if more else ""))
    return "\n".join(lines)
