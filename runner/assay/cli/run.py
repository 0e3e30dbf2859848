"""`assay run job.yaml`: the embedded default, a whole EvaluationJob on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from assay.cli._output import emit, format_option


@click.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--workers", type=click.IntRange(1, 64), help="ppl worker processes (default: spec.ppl.workers).")
@click.option("--no-progress", is_flag=True, help="Do not draw the progress bar.")
@click.option("--overwrite", is_flag=True,
              help="The output holds another run's results (other model, dataset or settings): delete that run's "
                   "files first (listed; files the run did not write are kept).")
@format_option
def run(manifest: Path, workers: int | None, no_progress: bool, overwrite: bool, fmt: str) -> None:
    """Run the EvaluationJob in MANIFEST locally: ppl workers, then cmp; print the metrics.

    Relative local URIs in the manifest are taken relative to the manifest's folder. Model and dataset
    are pinned to exact versions at the start; the output belongs to one run (model, dataset, settings),
    and another job into it is refused unless --overwrite. Run the same command again after a failure
    or Ctrl-C: finished shards are kept.

    Example: assay run examples/pennfudan/job.yaml --workers 2
    """
    from assay.runner.local import Interrupted, run_job
    from assay.spec import load_job, with_local_uris_relative_to

    job = with_local_uris_relative_to(load_job(manifest), manifest.resolve().parent)
    try:
        result = run_job(job, workers=workers, progress=not no_progress and fmt != "json", overwrite=overwrite,
                         manifest=manifest)
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = getattr(exc, "signum", 2)
        click.secho(f"interrupted ({'Ctrl-C' if signum == 2 else exc}): finished shards are kept", fg="yellow",
                    err=True)
        click.echo(f"  hint: run `assay run {manifest}` again to resume", err=True)
        raise click.exceptions.Exit(128 + signum) from None
    report = result.report
    emit(fmt, result.status, f"{report.table()}\n\njob folder: {result.job_dir}")
