"""Assembles the `assay` app from one module per command group and maps errors to one-line messages.

Set ASSAY_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import os
import sys

import click

from assay import __version__
from assay.errors import EXIT_PERMANENT, EXIT_RETRYABLE, AssayError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="assay")
def app() -> None:
    """assay: evaluate ML models on sharded datasets, locally or on Kubernetes."""


def _register() -> None:
    from assay.cli import dataset, job, model, run

    app.add_command(dataset.dataset)
    app.add_command(model.model)
    app.add_command(run.run)
    app.add_command(job.job)


def main(argv: list[str] | None = None) -> int:
    _register()
    try:
        app.main(args=argv, prog_name="assay", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except AssayError as exc:
        if os.environ.get("ASSAY_DEBUG") == "1":
            raise
        click.secho(f"error: {exc}", fg="red", err=True)
        return EXIT_RETRYABLE if exc.retryable else EXIT_PERMANENT
    return 0


if __name__ == "__main__":
    sys.exit(main())
