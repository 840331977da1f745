"""`virnucpro prepare`: FASTA -> frame table (+ the table of what gave no frame)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from virnucpro.cli.app import app
from virnucpro.errors import InputError


class Chunking(str, Enum):
    compatible = "compatible"
    even = "even"


SUPPORTED_CHUNK_LENGTHS = (300, 500)


def check_chunk_length(chunk_length: int) -> int:
    if chunk_length not in SUPPORTED_CHUNK_LENGTHS:
        raise typer.BadParameter(f"{chunk_length} is not a trained chunk length; use 300 or 500")
    return chunk_length


@app.command("prepare")
def prepare_command(
    input: Annotated[Path, typer.Option("--input", "-i", help="Nucleotide FASTA, plain or gzip.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Frame table to write (Parquet).")],
    chunk_length: Annotated[int, typer.Option("--chunk-length", callback=check_chunk_length,
                                              help="Expected length of the classifier: 300 or 500.")],
    chunking: Annotated[Chunking, typer.Option(
        help="compatible: the reference arithmetic (the published weights were trained on it); "
             "even: the overlap spread evenly, every chunk exactly the chunk length.")] = Chunking.compatible,
    unreported: Annotated[Path | None, typer.Option(
        help="Table of sequences/chunks that gave no kept frame, with the reason. "
             "Default: next to OUTPUT, named STEM.unreported.parquet (frames.parquet -> "
             "frames.unreported.parquet).")] = None,
    rename_duplicates: Annotated[bool, typer.Option(
        "--rename-duplicates", help="Rename repeated ids to ID_dup2, ID_dup3, ... instead of failing.")] = False,
    summary: Annotated[Path | None, typer.Option(help="Write counts and timing as JSON here.")] = None,
    batch_nucleotides: Annotated[int, typer.Option(min=1000, help="Nucleotides translated per batch "
                                                   "(one Parquet row group); bounds memory.")] = 2_000_000,
) -> None:
    """Chunk, six-frame translate and keep the stop-free frames: one Parquet row per kept frame."""
    from virnucpro.preprocess.prepare import default_unreported_path, prepare, summary_json

    unreported_path = unreported if unreported is not None else default_unreported_path(output)
    if unreported_path.resolve() == output.resolve():
        raise InputError(f"{output}: --unreported must differ from --output")
    stats = prepare(input, output, chunk_length=chunk_length, chunking=chunking.value, unreported=unreported_path,
                    rename_duplicates=rename_duplicates, batch_nucleotides=batch_nucleotides)
    if summary is not None:
        summary.write_text(summary_json(stats, input=str(input), output=str(output),
                                        unreported=str(unreported_path), chunk_length=chunk_length,
                                        chunking=chunking.value))
    typer.echo(f"{input}: {stats.sequences} sequences, {stats.chunks} chunks, {stats.frames} frames -> {output}; "
               f"{stats.unreported_rows} unreported rows ({stats.sequences_without_frames} sequences without a "
               f"frame) -> {unreported_path}")
