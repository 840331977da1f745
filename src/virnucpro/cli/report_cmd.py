"""`virnucpro report`: the HTML run report with plots, from files the pipeline already wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from virnucpro.cli.app import app


@app.command("report")
def report_command(
    predictions: Annotated[Path, typer.Option("--predictions", help="Output directory of `virnucpro predict`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML report to write.")],
    telemetry: Annotated[list[Path] | None, typer.Argument(help="Telemetry JSON of each embed-frames run.")] = None,
    prepare_summary: Annotated[Path | None, typer.Option(help="JSON written by `prepare --summary`.")] = None,
    json_output: Annotated[Path | None, typer.Option("--json", help="Also write the report's figures as JSON.")] = None,
    title: Annotated[str | None, typer.Option(help="Page title.")] = None,
) -> None:
    """Verdicts, score distributions, chunks without frames and embedding-engine telemetry on one page."""
    from virnucpro.report.html import write_report

    data = write_report(predictions, output, prepare_summary=prepare_summary, telemetry=telemetry or [],
                        json_output=json_output, title=title)
    typer.echo(f"{output}: {sum(data['verdicts'].values())} sequences, {data['verdicts'].get('virus', 0)} virus")
