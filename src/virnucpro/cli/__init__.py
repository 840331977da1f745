"""The `virnucpro` command line: one typer app, one module per subcommand group.

Each `*_cmd` module registers its commands on `app` when imported; `main` turns `VirNucProError`s into one readable
line and a meaningful exit code instead of a traceback.
"""

from __future__ import annotations

import sys

from virnucpro.cli.app import app
from virnucpro.errors import VirNucProError

# Imported for their side effect of registering commands on `app`.
from virnucpro.cli import fasta_cmd  # noqa: F401,E402
from virnucpro.cli import report_cmd  # noqa: F401,E402
from virnucpro.cli import demo_cmd  # noqa: F401,E402
from virnucpro.cli import embed_cmd  # noqa: F401,E402
from virnucpro.cli import prepare_cmd  # noqa: F401,E402
from virnucpro.cli import predict_cmd  # noqa: F401,E402
from virnucpro.cli import engine_cmd  # noqa: F401,E402


def main() -> None:
    try:
        app()
    except VirNucProError as err:
        print(f"virnucpro: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


__all__ = ["app", "main"]
