"""``python -m assay_operator``: run the operator on ASSAY_OPERATOR_NAMESPACES (default: all).

This is the container's entrypoint (the Helm chart's Deployment): kopf's liveness endpoint on
``:ASSAY_OPERATOR_HEALTH_PORT/healthz``, kopf standalone (no peering objects, so no RBAC for them: the
replicas elect a leader on a Lease instead, ``assay_operator.leader``), and logs as text or JSON lines
(ASSAY_OPERATOR_LOG_FORMAT).
"""

from __future__ import annotations

import logging

import kopf

import assay_operator.main  # noqa: F401 - registers the handlers
from assay_operator import settings


def main() -> None:
    cfg = settings.load()
    kopf.configure(log_format=kopf.LogFormat.JSON if cfg.log_format == "json" else kopf.LogFormat.FULL,
                   log_refkey="object" if cfg.log_format == "json" else None)
    logging.getLogger().setLevel(cfg.log_level)
    kopf.run(clusterwide=not cfg.namespaces, namespaces=cfg.namespaces, standalone=True,
             liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz")


if __name__ == "__main__":
    main()
