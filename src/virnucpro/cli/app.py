"""The typer application object shared by every subcommand module."""

from __future__ import annotations

import typer

from virnucpro import __version__


app = typer.Typer(
    name="virnucpro",
    help="Find viral sequences with DNABERT-S + ESM-2 embeddings and the VirNucPro classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"virnucpro {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Find viral sequences with DNABERT-S + ESM-2 embeddings and the VirNucPro classifier."""
