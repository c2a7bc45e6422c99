"""Options shared by the commands that write a folder."""

from __future__ import annotations

import typer

OVERWRITE = typer.Option(False, "--overwrite", help="Replace OUT when it holds this command's kind of pnlm output "
                         "(a folder with anything else in it is never replaced).")
