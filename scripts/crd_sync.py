"""The chart's CRD template is crds/evaluationjob.yaml wrapped for Helm; this module builds and checks it.

Helm installs files in a chart's crds/ folder once and never upgrades them, so the chart carries the CRD
as a template instead, annotated ``helm.sh/resource-policy: keep`` (``helm uninstall`` must not delete
the CRD and with it every EvaluationJob). Between the BEGIN and END lines the template is the source
file byte for byte, except the two annotation lines inserted after ``metadata:``.

Regenerate after editing crds/evaluationjob.yaml:  python -m scripts.crd_sync
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "crds" / "evaluationjob.yaml"
TEMPLATE = ROOT / "charts" / "assay" / "templates" / "crd-evaluationjob.yaml"

HEADER = (
    "{{- /* The EvaluationJob CRD as a template, so `helm upgrade` upgrades it (Helm never upgrades crds/).\n"
    "Between BEGIN and END: crds/evaluationjob.yaml byte for byte plus the keep annotation after metadata:.\n"
    "tests/deploy/test_chart.py checks it; regenerate with: python -m scripts.crd_sync */}}\n"
    "{{- if .Values.crds.install }}\n"
    "# BEGIN crds/evaluationjob.yaml\n"
)
FOOTER = "# END crds/evaluationjob.yaml\n{{- end }}\n"
KEEP = "  annotations:\n    helm.sh/resource-policy: keep\n"
ANCHOR = "\nmetadata:\n"


def wrap(source: str) -> str:
    """The template text for a CRD source text."""
    if "{{" in source or "}}" in source:
        raise ValueError("the CRD contains '{{' or '}}', which Helm would read as template actions")
    if source.count(ANCHOR) != 1:
        raise ValueError("the CRD must have exactly one top-level 'metadata:' line")
    return HEADER + source.replace(ANCHOR, ANCHOR + KEEP, 1) + FOOTER


def unwrap(template: str) -> str:
    """The CRD source text inside a template (the inverse of ``wrap``)."""
    if not template.startswith(HEADER) or not template.endswith(FOOTER):
        raise ValueError(f"{TEMPLATE.name} lost its BEGIN/END wrapping")
    body = template[len(HEADER):-len(FOOTER)]
    if ANCHOR + KEEP not in body:
        raise ValueError(f"{TEMPLATE.name} lost its helm.sh/resource-policy: keep annotation")
    return body.replace(ANCHOR + KEEP, ANCHOR, 1)


if __name__ == "__main__":
    TEMPLATE.write_text(wrap(SOURCE.read_text()))
    print(f"wrote {TEMPLATE.relative_to(ROOT)}")
