"""One way to print: tables for people, JSON for machines (--format json)."""

from __future__ import annotations

import json
from typing import Any

import click

from assay.layout import DEFAULT_STORE


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def emit(fmt: str, data: Any, human: str) -> None:
    click.echo(json.dumps(data, indent=1, default=str) if fmt == "json" else human)


format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="Output format.")
store_option = click.option("--store", default=DEFAULT_STORE, show_default=True, envvar="ASSAY_STORE",
                            help="Store URI: a local folder, file:// or s3://bucket/prefix ($ASSAY_STORE).")
