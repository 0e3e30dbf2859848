"""Pod entrypoint: ``python -m assay.runner ppl|cmp``.

The context comes from the environment the operator sets (``RunContext.ENV``; the worker index is
Kubernetes' JOB_COMPLETION_INDEX). Exit codes: 0 done; EXIT_PERMANENT (3) for deterministic errors
(bad spec, handler, corrupt data) so the Job fails at once; EXIT_RETRYABLE (1) for everything else.
"""

from __future__ import annotations

import logging
import sys

from assay.errors import EXIT_PERMANENT, EXIT_RETRYABLE, AssayError
from assay.logs import setup_logging
from assay.spec import RunContext


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in ("ppl", "cmp"):
        print("usage: python -m assay.runner ppl|cmp", file=sys.stderr)
        return 2
    role = argv[0]
    try:
        ctx = RunContext.from_env()
    except AssayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PERMANENT
    worker = ctx.worker_index if role == "ppl" else None
    with setup_logging(ctx, role, worker, json_format=True):
        log = logging.getLogger(f"assay.{role}")
        try:
            if role == "ppl":
                from assay.runner import ppl

                ppl.run(ctx)
            else:
                from assay.runner import cmp

                cmp.run(ctx)
        except AssayError as exc:
            log.error("%s: %s", type(exc).__name__, exc)
            return EXIT_RETRYABLE if exc.retryable else EXIT_PERMANENT
        except Exception:  # noqa: BLE001 - unknown failures are retried by the Job
            log.exception("unexpected error")
            return EXIT_RETRYABLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
