"""Entry point of the `pnlm` command: commands are registered from one module per concern."""

from __future__ import annotations

import sys

import typer

from pnlm.cli import data, generate, info, init
from pnlm.cli.console import console
from pnlm.errors import PnlmError

app = typer.Typer(name="pnlm", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Small specialized language models, planned early (arXiv 2402.01093).")
app.add_typer(data.app, name="data")
app.command("init")(init.init)
app.command("info")(info.info)
app.command("generate")(generate.generate)


def main() -> None:
    """Run the app; a user error becomes one line on stderr and exit status 2."""
    try:
        app(standalone_mode=False)
    except PnlmError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
