"""Reading the user's YAML files (EvaluationJob manifests, dataset.yaml, model.yaml) with errors that say
what to fix, and within bounds: a few hundred bytes of YAML aliases can expand into gigabytes
("billion laughs"), so documents are limited in size and in the nodes their aliases expand to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from assay.errors import SpecError

#: Largest YAML file read, in bytes.
MAX_BYTES = 1 << 20
#: Most nodes a document may hold once its aliases are expanded.
MAX_NODES = 100_000


class _Loader(yaml.SafeLoader):
    pass


def _expanded_nodes(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in ``node`` with every alias expanded (shared subtrees counted each time they are used)."""
    key = id(node)
    if key not in memo:
        memo[key] = 1  # a cycle (a recursive alias) counts once here and is refused by the limit below
        if isinstance(node, yaml.SequenceNode):
            memo[key] += sum(_expanded_nodes(n, memo) for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[key] += sum(_expanded_nodes(k, memo) + _expanded_nodes(v, memo) for k, v in node.value)
    return memo[key]


def parse_yaml(text: str, source: str) -> list[Any]:
    """Every document of ``text`` (empty ones dropped), refusing oversized or alias-bomb input."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise SpecError(f"{source}: larger than {MAX_BYTES >> 10} KiB", "a manifest or config is a few KiB of YAML")
    docs = []
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters up front
        raise SpecError(f"{source}: not valid YAML: {exc}") from exc
    try:
        while loader.check_node():
            node = loader.get_node()
            if _expanded_nodes(node, {}) > MAX_NODES:
                raise SpecError(f"{source}: YAML aliases expand to more than {MAX_NODES} nodes",
                                "write the values out instead of nesting aliases (&name / *name)")
            doc = loader.construct_document(node)
            if doc is not None:
                docs.append(doc)
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise SpecError(f"{source}: YAML nested too deeply", "flatten the document") from exc
    finally:
        loader.dispose()
    return docs


def read_text(path: str | Path, kind: str) -> str:
    """A config file's text, with one-line errors for a missing, unreadable or non-UTF-8 file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise SpecError(f"{path}: larger than {MAX_BYTES >> 10} KiB", f"check the path of the {kind}")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError(f"no such file: {path}", f"check the path of the {kind}") from exc
    except IsADirectoryError as exc:
        raise SpecError(f"{path} is a folder", f"check the path of the {kind}") from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start})", f"save the {kind} as UTF-8") from exc
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}",
                        f"check the path of the {kind} and that it is readable") from exc


def read_mapping(path: str | Path, kind: str, expected: str, known: set[str]) -> dict[str, Any]:
    """Parse ``path`` as a YAML mapping whose keys are all in ``known``."""
    path = Path(path)
    docs = parse_yaml(read_text(path, kind), str(path))
    doc = docs[0] if len(docs) == 1 else None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: expected a mapping with {expected}")
    unknown = sorted(set(map(str, doc)) - known)
    if unknown:
        raise SpecError(f"{path}: unknown field {unknown[0]!r}", f"fields allowed: {', '.join(sorted(known))}")
    return doc
