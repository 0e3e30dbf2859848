"""``python -m assay_operator``: run the operator on ASSAY_OPERATOR_NAMESPACES (default: all)."""

from __future__ import annotations

import kopf

import assay_operator.main  # noqa: F401 - registers the handlers
from assay_operator import settings


def main() -> None:
    namespaces = settings.load().namespaces
    kopf.run(clusterwide=not namespaces, namespaces=namespaces, liveness_endpoint="http://0.0.0.0:8080/healthz")


if __name__ == "__main__":
    main()
