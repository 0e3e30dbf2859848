"""Assembles the `assay` app from one module per command group and maps errors to one-line messages.

Set ASSAY_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import os
import sys

import click

from assay import __version__
from assay.cli._output import safe_text
from assay.protocol import failure_of


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="assay")
def app() -> None:
    """assay: evaluate ML models on sharded datasets, locally or on Kubernetes."""


def _register() -> None:
    from assay.cli import compare, dataset, job, model, report, run

    app.add_command(dataset.dataset)
    app.add_command(model.model)
    app.add_command(run.run)
    app.add_command(report.report)
    app.add_command(compare.compare)
    app.add_command(job.job)


def main(argv: list[str] | None = None) -> int:
    _register()
    try:
        # without standalone mode, click returns (not raises) the code of a command's Exit
        code = app.main(args=argv, prog_name="assay", standalone_mode=False)
        if isinstance(code, int):
            return code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place where anything becomes a message
        if os.environ.get("ASSAY_DEBUG") == "1":
            _print_traceback()
        failure = failure_of(exc)
        click.secho(_scrub(failure.text()), fg="red", err=True)
        return failure.exit_code
    return 0


#: Variables whose values are secrets: a traceback never shows them.
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def _print_traceback() -> None:
    """ASSAY_DEBUG=1: the traceback of the error being handled, with the credentials of any URL and the
    values of the secret variables hidden, as in the error messages; the error line follows it."""
    import traceback

    click.echo(_scrub(traceback.format_exc().rstrip("\n")), err=True)


def _scrub(text: str) -> str:
    """``text`` fit for the terminal: no URL credentials, no secret variable's value, no control characters."""
    from assay.storage import redact

    text = redact(text)
    for name in _SECRET_VARIABLES:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return safe_text(text, keep_newlines=True)


if __name__ == "__main__":
    sys.exit(main())
