"""`assay report JOB`: one finished run as a self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import click

from assay.cli._output import emit, format_option


@click.command()
@click.argument("job")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default: report-<job name>.html in the working folder; the job name "
                   "is metadata.name, or the output folder's name).")
@click.option("--gallery", type=click.IntRange(0, 200), default=12, show_default=True,
              help="Images in the worst-samples (coco) or misclassified (classification) gallery.")
@format_option
def report(job: str, out: Path | None, gallery: int, fmt: str) -> None:
    """Write the report of the finished run JOB: metrics, curves and the worst samples, in one HTML file.

    JOB is the job's manifest (as for `assay run`) or its output folder or URI. The file needs no network:
    images and plots are embedded. A run that has not finished, or whose results do not verify, is refused.

    Example: assay report examples/pennfudan/job.yaml -o report.html
    """
    from assay.report.finished import open_run
    from assay.report.page import build
    from assay.storage import atomic_local_file, writable_target

    if out is not None:
        writable_target(str(out))  # refuse a device or FIFO before the slow part, not after
    with open_run(job) as run:
        text = build(run, gallery=gallery)
        name = run.name
    out = out or Path(f"report-{name}.html")
    with atomic_local_file(str(out)) as tmp:  # a failed write leaves no half page
        Path(tmp).write_text(text, encoding="utf-8")
    emit(fmt, {"report": str(out), "bytes": len(text.encode())}, f"report written to {out}")
