"""The `pnlm` command line (typer + rich)."""
