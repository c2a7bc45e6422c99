"""Entry point of the `pnlm` command: commands are registered from one module per concern."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from pnlm.cli import advise, cluster, data, distill, experiment, generate, info, init, instantiate, interop, pretrain, train
from pnlm.cli.console import console
from pnlm.errors import PnlmError
from pnlm.files.run_lock import abandon_runs, release_outputs

app = typer.Typer(name="pnlm", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Small specialized language models, planned early (arXiv 2402.01093).")
data.app.command("cluster")(cluster.cluster)
data.app.command("assign")(cluster.assign)
app.add_typer(data.app, name="data")
app.add_typer(experiment.app, name="experiment")
app.command("init")(init.init)
app.command("info")(info.info)
app.command("generate")(generate.generate)
app.command("pretrain")(pretrain.pretrain)
app.command("instantiate")(instantiate.instantiate)
app.command("finetune")(train.finetune)
app.command("eval")(train.eval_command)
app.command("fuse")(train.fuse_command)
app.command("distill")(distill.distill)
app.command("export")(interop.export)
app.command("import")(interop.import_command)
app.command("advise")(advise.advise)


def main() -> None:
    """Run the app; a user error becomes one line on stderr and exit status 2 (usage errors are typer's, also 2)."""
    try:
        app()
    except PnlmError as exc:
        abandon_runs()
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as exc:  # the system refused a read or a write (permission, a read-only disk): the user's to fix
        abandon_runs()
        where = f"{exc.filename}: " if exc.filename else ""
        console.print(f"[red]error:[/red] {escape(where + (exc.strerror or str(exc)))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    finally:
        release_outputs()
