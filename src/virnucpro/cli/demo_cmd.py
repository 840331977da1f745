"""`virnucpro make-tiny-classifier`: a randomly initialised classifier sized for a pair of (tiny) models, so the
test profile can run predict end to end. Its predictions mean nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from virnucpro.cli.app import app


@app.command("make-tiny-classifier")
def make_tiny_classifier(
    esm_model: Annotated[Path, typer.Option(help="ESM-2 model the features come from.")],
    dnabert_model: Annotated[Path, typer.Option(help="DNABERT-S model the features come from.")],
    chunk_length: Annotated[int, typer.Option(help="Chunk length to record in the classifier (300 or 500).")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".safetensors file to write.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Random MLPClassifier with input size = DNABERT-S hidden + ESM-2 hidden, saved like `convert-classifier`."""
    import torch

    from virnucpro.classify.model import MLPClassifier, save_classifier
    from virnucpro.models.registry import load_encoder

    dims = [load_encoder(kind, path).hidden_size for kind, path in (("dnabert", dnabert_model), ("esm2", esm_model))]
    torch.manual_seed(seed)
    model = MLPClassifier(input_dim=sum(dims))
    with torch.no_grad():  # non-trivial running statistics so eval-mode BatchNorm is exercised
        model.bn1.running_mean.normal_(0.0, 0.1)
        model.bn1.running_var.uniform_(0.5, 1.5)
    save_classifier(model.eval(), chunk_length, output, source="make-tiny-classifier")
    typer.echo(f"{output}: random classifier, input {sum(dims)} = DNABERT-S {dims[0]} + ESM-2 {dims[1]}")
