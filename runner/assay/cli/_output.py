"""One way to print: tables for people, JSON for machines (--format json)."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import click

from assay.layout import DEFAULT_STORE


def safe_text(text: Any, keep_newlines: bool = False) -> str:
    """``text`` with every control character escaped (``\\x1b``), so that a crafted id or file name cannot
    move the cursor, set the terminal title or clear the screen. ``keep_newlines`` keeps line breaks
    and tabs (for whole messages; a cell or an id gets none)."""
    text = str(text)
    if text.isprintable() and "\x1b" not in text:
        return text
    out = []
    for ch in text:
        if ch in "\n\t" and keep_newlines:
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


#: bidirectional overrides and isolates: they reorder what follows on the line.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[safe_text(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def emit(fmt: str, data: Any, human: str) -> None:
    click.echo(json.dumps(data, indent=1, default=str) if fmt == "json" else safe_text(human, keep_newlines=True))


format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="Output format.")
store_option = click.option("--store", default=DEFAULT_STORE, show_default=True, envvar="ASSAY_STORE",
                            help="Store URI: a local folder, file:// or s3://bucket/prefix ($ASSAY_STORE).")
