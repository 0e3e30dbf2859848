"""`assay dataset build|info|list`."""

from __future__ import annotations

from pathlib import Path

import click

from assay.cli._output import emit, format_option, store_option, table


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
@click.argument("uri")
@format_option
def info(uri: str, fmt: str) -> None:
    """Show a dataset's manifest: URI of its folder (or its name folder for the latest version)."""
    from dataclasses import asdict

    from assay.shards import load_manifest

    m = load_manifest(uri)
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

    rows = [{"name": m.name, "version": m.version, "samples": m.samples, "shards": len(m.shards),
             "bytes": sum(s.bytes for s in m.shards), "uri": m.uri} for m in list_datasets(store)]
    emit(fmt, rows, table(rows, ["name", "version", "samples", "shards", "bytes", "uri"]))
