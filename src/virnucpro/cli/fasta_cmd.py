"""Input intake commands used by the pipeline's first steps: `validate-input` and `split`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from virnucpro.cli.app import app
from virnucpro.io.fasta import read_fasta, write_fasta


@app.command("validate-input")
def validate_input(
    input: Annotated[Path, typer.Option("--input", "-i", help="FASTA file (plain or gzip).")],
    summary: Annotated[Path | None, typer.Option(help="Write a JSON summary (records, bases) here.")] = None,
) -> None:
    """Read the whole FASTA once and fail with one clear line on the first problem."""
    records = bases = 0
    for record in read_fasta(input):
        records += 1
        bases += len(record.sequence)
    result = {"file": str(input), "records": records, "bases": bases}
    if summary is not None:
        summary.write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(f"{input}: {records} records, {bases} bases")


@app.command("split")
def split(
    input: Annotated[Path, typer.Option("--input", "-i", help="FASTA file (plain or gzip).")],
    shards: Annotated[int, typer.Option(min=1, help="Number of shards; record k goes to shard k mod N.")] = 2,
    prefix: Annotated[str, typer.Option(help="Output file prefix: PREFIX.shard-000.fa ...")] = "split",
    outdir: Annotated[Path, typer.Option(help="Output directory.")] = Path("."),
) -> None:
    """Stride-split a FASTA into N shards (record k to shard k mod N), keeping input order inside each shard."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [outdir / f"{prefix}.shard-{i:03d}.fa" for i in range(shards)]
    handles = [open(p, "w") for p in paths]
    try:
        for record in read_fasta(input):
            write_fasta([(record.id, record.sequence)], handles[record.index % shards])
    finally:
        for handle in handles:
            handle.close()
    typer.echo(f"wrote {shards} shards to {outdir}")


@app.command("gather-counts")
def gather_counts(
    summaries: Annotated[list[Path], typer.Argument(help="JSON summaries written by validate-input --summary.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="TSV: shard, records, bases; one row per summary.")],
) -> None:
    """Combine per-shard record counts into one table (sorted by shard name), with a total row."""
    import polars as pl

    rows = []
    for path in sorted(summaries, key=lambda p: p.name):
        data = json.loads(path.read_text())
        rows.append({"shard": Path(data["file"]).name, "records": int(data["records"]), "bases": int(data["bases"])})
    table = pl.DataFrame(rows, schema={"shard": pl.Utf8, "records": pl.Int64, "bases": pl.Int64})
    total = pl.DataFrame({"shard": ["total"], "records": [table["records"].sum()], "bases": [table["bases"].sum()]},
                         schema=table.schema)
    pl.concat([table, total]).write_csv(output, separator="\t")
    typer.echo(f"{output}: {len(rows)} shards")
