"""`assay model build|info|list`."""

from __future__ import annotations

from pathlib import Path

import click

from assay.cli._output import emit, format_option, store_option, table


@click.group()
def model() -> None:
    """Build and inspect model packages."""


@model.command()
@click.argument("config", type=click.Path(path_type=Path))
@store_option
@format_option
def build(config: Path, store: str, fmt: str) -> None:
    """Package the code and weights named by CONFIG (model.yaml) into the store.

    Example: assay model build examples/pennfudan/model.yaml --store s3://bucket/assay
    """
    from assay import packages

    cfg = packages.load_config(config)
    m = packages.build(cfg, store, log=lambda s: click.echo(s, err=True))
    emit(fmt, {"name": m.name, "version": m.version, "uri": m.uri},
         f"model {m.name} version {m.version}\nuri: {m.uri}")


@model.command()
@click.argument("ref")
@store_option
@format_option
def info(ref: str, store: str, fmt: str) -> None:
    """Show a model package's manifest. REF is a NAME (its latest version) or NAME@VERSION in the store, or a URI.

    Example: assay model info pennfudan-maskrcnn
    """
    from dataclasses import asdict

    from assay.layout import resolve_ref
    from assay.packages import load_manifest

    m = load_manifest(resolve_ref(ref, store, "models"))
    rows = [{"file": f["path"], "bytes": f["bytes"], "sha256": f["sha256"][:16]} for f in m.files]
    builtin = "" if m.builtin is None else (f"torchvision: {m.builtin['architecture']}, {m.builtin['num_classes']} "
                                            f"classes, weights {m.builtin['source']}\n")
    human = (f"name: {m.name}\nversion: {m.version}\nuri: {m.uri}\nhandler: {m.handler}\n{builtin}"
             f"evaluator: {m.evaluator}\ndesc: {m.desc}\n\n" + table(rows, ["file", "bytes", "sha256"]))
    emit(fmt, asdict(m), human)


@model.command("list")
@store_option
@format_option
def list_(store: str, fmt: str) -> None:
    """List the model packages in a store."""
    from assay.cli.dataset import _report_damaged
    from assay.packages import list_models

    damaged: list = []
    rows = [{"name": m.name, "version": m.version, "files": len(m.files), "bytes": m.package_bytes,
             "evaluator": m.evaluator, "uri": m.uri} for m in list_models(store, damaged)]
    emit(fmt, rows, table(rows, ["name", "version", "files", "bytes", "evaluator", "uri"]))
    _report_damaged(damaged, "model packages", "rebuild it with `assay model build`, or delete that version folder")
