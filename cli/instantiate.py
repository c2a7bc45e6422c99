"""`pnlm instantiate`: the plain SLM a domain gets from a projected network or a hard mixture."""

from __future__ import annotations

from pathlib import Path

import typer

import pnlm
from pnlm.cli.console import console, print_json
from pnlm.cli.options import OVERWRITE


def instantiate(
    run: Path = typer.Argument(..., help="A `pretrain --method pn` run (or its checkpoint) or a `--method mix` run."),
    domain: Path | None = typer.Option(None, "--domain", help="The domain's token store, labelled with the run's "
                                       "clusters (`pnlm data assign`)."),
    expert: str = typer.Option("auto", "--expert", help="auto (the domain's most frequent cluster), an index, or "
                               "histogram (pn: the experts mixed by the domain's histogram, E_p = p @ E)."),
    out: Path = typer.Option(..., "--out", help="The plain checkpoint to write."),
    overwrite: bool = OVERWRITE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Write the expert as an ordinary small model (the SLM's shapes and parameter count) to fine-tune."""
    report = pnlm.instantiate(run, out, domain=domain, expert=expert, overwrite=overwrite).to_json()
    if json_out:
        print_json(report)
        return
    if "histogram" in report:
        shares = " ".join(f"{i}:{share:.2f}" for i, share in enumerate(report["histogram"]) if share >= 0.005)
        console.print(f"domain {report['domain']}: {report['windows']:,} train windows; top cluster "
                      f"{report['top_cluster']} with share {report['top_share']:.3f}; entropy {report['entropy']:.3f} "
                      f"nats; histogram {shares}")
    which = (f"expert {report['expert']}" if "expert" in report else "the soup's model for the histogram"
             if report["kind"] == "soup" else "the histogram's mixture of experts")
    console.print(f"{which} of {run} ({report['kind']}) written to {out}: {report['params']:,} parameters")
