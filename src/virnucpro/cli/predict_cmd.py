"""`virnucpro predict` (features -> frame, chunk and sequence verdicts) and `virnucpro convert-classifier`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from virnucpro.cli.app import app
from virnucpro.cli.prepare_cmd import check_chunk_length


class SequenceRuleOption(str, Enum):
    majority = "majority"
    any = "any"


def _check_optional_chunk_length(value: int | None) -> int | None:
    return None if value is None else check_chunk_length(value)


ClassifierChunkLength = Annotated[int | None, typer.Option(
    "--classifier-chunk-length", callback=_check_optional_chunk_length,
    help="Chunk length a .pth classifier was trained for, when its name is not 300_model.pth / 500_model.pth.")]


@app.command("predict")
def predict_command(
    features: Annotated[Path, typer.Option(help="Feature bundle directory (from embed-frames).")],
    classifier: Annotated[Path, typer.Option(help="Classifier: .safetensors (convert-classifier) or the published "
                                             ".pth.")],
    chunk_length: Annotated[int, typer.Option("--chunk-length", callback=check_chunk_length,
                                              help="Chunk length the frames were prepared with: 300 or 500.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory.")],
    frames: Annotated[Path | None, typer.Option(
        help="Frame table from `prepare`: maps frames to sequences and lists sequences without frames.")] = None,
    unreported: Annotated[Path | None, typer.Option(
        help="Unreported table from `prepare`. Default: the STEM.unreported.parquet next to --frames.")] = None,
    classifier_chunk_length: ClassifierChunkLength = None,
    sequence_rule: Annotated[SequenceRuleOption, typer.Option(
        help="Sequence verdict: majority = virus when at least half of its scored chunks are virus; "
             "any = virus when any chunk is.")] = SequenceRuleOption.majority,
    batch_size: Annotated[int, typer.Option(min=1, help="Frames scored per batch.")] = 4096,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Score every frame with the MLP classifier; write frame, chunk and sequence tables (TSV + Parquet)."""
    from virnucpro.classify.predict import run_predict

    summary = run_predict(features, classifier, chunk_length=chunk_length, output=output, frames=frames,
                          unreported=unreported, classifier_chunk_length=classifier_chunk_length,
                          sequence_rule=sequence_rule.value, batch_size=batch_size, device=device)
    verdicts = ", ".join(f"{name}: {count}" for name, count in summary["verdicts"].items())
    typer.echo(f"{summary['n_frames']} frames, {summary['n_chunks']} chunks, {summary['n_sequences']} sequences "
               f"({verdicts}) -> {output}")


@app.command("convert-classifier")
def convert_classifier_command(
    source: Annotated[Path, typer.Argument(help="Published classifier, e.g. 500_model.pth (a pickled module).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .safetensors file.")],
    classifier_chunk_length: ClassifierChunkLength = None,
) -> None:
    """Convert a pickled classifier to safetensors, loading it through a restricted unpickler."""
    from virnucpro.classify.model import convert_classifier

    loaded = convert_classifier(source, output, classifier_chunk_length=classifier_chunk_length)
    typer.echo(f"{source} -> {output} (chunk length {loaded.chunk_length}, input dim {loaded.input_dim})")
