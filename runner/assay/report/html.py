"""HTML building blocks for a self-contained page: every text goes through ``escape``.

Sample ids, class and category names, model and dataset names come from users' datasets and packages,
so nothing is pasted into markup unescaped; markup is built only here, from ``Html`` values, which
mark what is already safe. Images are ``data:`` URIs, the style is inline, and there is no script:
the file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html as _html
from typing import Any


class Html(str):
    """Markup that is already safe (built by this module)."""


def escape(value: Any) -> Html:
    return value if isinstance(value, Html) else Html(_html.escape(str(value), quote=True))


def join(parts: list[Any]) -> Html:
    return Html("".join(escape(p) for p in parts))


def tag(name: str, *children: Any, **attrs: Any) -> Html:
    """``<name attrs>children</name>``; attribute values are escaped, ``class_`` is ``class``."""
    attributes = "".join(f' {k.rstrip("_").replace("_", "-")}="{escape(v)}"' for k, v in attrs.items()
                         if v is not None)
    return Html(f"<{name}{attributes}>{join(list(children))}</{name}>")


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image(data: bytes, mime: str, alt: str, **attrs: Any) -> Html:
    return Html(f'<img src="{escape(data_uri(data, mime))}" alt="{escape(alt)}"'
                + "".join(f' {k}="{escape(v)}"' for k, v in attrs.items()) + ">")


def table(header: list[Any], rows: list[list[Any]], **attrs: Any) -> Html:
    head = tag("tr", *[tag("th", h) for h in header])
    body = [tag("tr", *[tag("td", _cell(c)) for c in row]) for row in rows]
    return tag("table", tag("thead", head), tag("tbody", *body), **attrs)


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else value


def section(section_id: str, title: str, *children: Any) -> Html:
    return tag("section", tag("h2", title), *children, id=section_id)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1280px; color: #1d232b; padding: 0 16px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #d5dae1; padding-bottom: 4px; margin-top: 32px; }
.muted { color: #5b6573; } table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #d5dae1; padding: 4px 10px; text-align: left; font-variant-numeric: tabular-nums; }
th { background: #f1f4f7; } img.plot { max-width: 100%; display: block; margin: 8px 0; }
.row { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #d5dae1; padding: 6px; background: #fafbfc; }
figcaption { font-size: 13px; margin-top: 4px; max-width: 400px; word-break: break-all; }
.legend-gt { color: #00a050; font-weight: bold; } .legend-pred { color: #e07800; font-weight: bold; }
"""


def page(title: str, subtitle: str, *sections: Html) -> str:
    head = tag("head", Html('<meta charset="utf-8">'), tag("title", title), Html(f"<style>{STYLE}</style>"))
    body = tag("body", tag("h1", title), tag("p", subtitle, class_="muted"), *sections)
    return f"<!DOCTYPE html>\n<html lang=\"en\">{head}{body}</html>\n"
