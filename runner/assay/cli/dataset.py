"""`assay dataset build|info|list|check`."""

from __future__ import annotations

from pathlib import Path

import click

from assay.cli._output import emit, format_option, safe_text, store_option, table


@click.group()
def dataset() -> None:
    """Build and inspect sharded datasets."""


@dataset.command()
@click.argument("config", type=click.Path(path_type=Path))
@store_option
@click.option("--data-dir", type=click.Path(path_type=Path), help="Override data_dir of dataset.yaml.")
@format_option
def build(config: Path, store: str, data_dir: Path | None, fmt: str) -> None:
    """Build a dataset from CONFIG (dataset.yaml) into the store.

    Example: assay dataset build examples/pennfudan/dataset.yaml --store s3://bucket/assay
    """
    from assay import datasets

    cfg = datasets.load_config(config)
    click.echo(f"building dataset {cfg.name} from {data_dir or cfg.data_dir}", err=True)
    m = datasets.build(cfg, store, data_dir=data_dir, log=lambda s: click.echo(s, err=True))
    emit(fmt, {"name": m.name, "version": m.version, "uri": m.uri, "samples": m.samples, "shards": len(m.shards)},
         f"dataset {m.name} version {m.version}: {m.samples} samples in {len(m.shards)} shards\nuri: {m.uri}")


@dataset.command()
@click.argument("ref")
@store_option
@format_option
def info(ref: str, store: str, fmt: str) -> None:
    """Show a dataset's manifest. REF is a NAME (its latest version) or NAME@VERSION in the store, or a URI.

    Example: assay dataset info pennfudan
    """
    from dataclasses import asdict

    from assay.layout import resolve_ref
    from assay.shards import load_manifest

    m = load_manifest(resolve_ref(ref, store, "datasets"))
    rows = [{"shard": s.name, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256[:16]} for s in m.shards]
    human = (f"name: {m.name}\nversion: {m.version}\nuri: {m.uri}\nsamples: {m.samples}\n"
             f"labels: {m.label_schema}\ndesc: {m.desc}\n\n" + table(rows, ["shard", "samples", "bytes", "sha256"]))
    emit(fmt, asdict(m), human)


@dataset.command("list")
@store_option
@format_option
def list_(store: str, fmt: str) -> None:
    """List the datasets in a store."""
    from assay.datasets import list_datasets

    damaged: list = []
    rows = [{"name": m.name, "version": m.version, "samples": m.samples, "shards": len(m.shards),
             "bytes": sum(s.bytes for s in m.shards), "uri": m.uri} for m in list_datasets(store, damaged)]
    emit(fmt, rows, table(rows, ["name", "version", "samples", "shards", "bytes", "uri"]))
    _report_damaged(damaged, "datasets", "rebuild it with `assay dataset build`, or delete that version folder")


def _report_damaged(damaged: list, what: str, hint: str) -> None:
    """After the listing of the intact versions: name each damaged one, and exit 3 (a person must act)."""
    if not damaged:
        return
    from assay.errors import EXIT_PERMANENT

    for exc in damaged:
        click.secho(safe_text(f"error: {exc.message}"), fg="red", err=True)
    click.secho(f"error: {len(damaged)} of the {what} left out of the list: their manifests are damaged\n  hint: {hint}",
                fg="red", err=True)
    raise click.exceptions.Exit(EXIT_PERMANENT)


@dataset.command()
@click.argument("ref")
@store_option
@click.option("--evaluator", type=click.Choice(["coco", "classification"]),
              help="Default: coco when the label schema has categories, classification when it has classes.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="ppl worker processes.")
@click.option("--output", type=click.Path(path_type=Path), help="Keep the check's job folder here (default: a "
              "temporary folder, deleted).")
@format_option
@click.pass_context
def check(ctx: click.Context, ref: str, store: str, evaluator: str | None, workers: int, output: Path | None,
          fmt: str) -> None:
    """Score the dataset's own ground truth through ppl and cmp: anything but 1.000 is a fault, named.

    A built-in oracle model predicts each sample's labels; the same runner, results files and
    evaluator as a real run must then give AP 1.000 (coco) or accuracy 1.000 (classification).
    Exits 0 when they do, 3 when not, with the labelling or pipeline fault and its samples.

    Example: assay dataset check pennfudan
    """
    from assay.check import check as run_check
    from assay.errors import EXIT_PERMANENT
    from assay.layout import resolve_ref
    from assay.runner.local import evaluate

    result = run_check(resolve_ref(ref, store, "datasets"), evaluate, evaluator, workers, output)
    doc = {"ok": result.ok, "dataset": result.dataset, "evaluator": result.evaluator, "samples": result.samples,
           "scores": result.scores, "error": result.error,
           "faults": {k: [{"sample": s, "detail": d} for s, d in v] for k, v in result.faults.items()}}
    human = result.line()
    if not result.ok:
        human += "".join(f"\n  {kind}: {s}" + (f": {d}" if d else "") for kind, items in result.faults.items()
                         for s, d in items[:20])
    emit(fmt, doc, human)
    ctx.exit(0 if result.ok else EXIT_PERMANENT)
