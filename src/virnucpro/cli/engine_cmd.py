"""`virnucpro embed-frames` (the embedding runtime) and `virnucpro aggregate` (shards -> feature file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from virnucpro.cli.app import app
from virnucpro.errors import InputError


def _budget(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        budget = int(value)
    except ValueError:
        budget = 0
    if budget < 1:
        raise InputError(f"--token-budget {value!r}: expected auto or a positive number of tokens")
    return budget


@app.command("embed-frames")
def embed_frames_command(
    frames: Annotated[Path, typer.Option("--frames", help="Frame table (Parquet) from `virnucpro prepare`.")],
    esm_model: Annotated[str, typer.Option("--esm-model", help="ESM-2 model folder / fair-esm .pt, or "
                                           "random:<preset> (benchmarks only).")],
    dnabert_model: Annotated[str, typer.Option("--dnabert-model", help="DNABERT-S model folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Feature file (bundle directory) to write; with "
                                         "--shard, the shard directory for `virnucpro aggregate`.")],
    checkpoint_dir: Annotated[Path | None, typer.Option(
        "--checkpoint-dir", help="Checkpoint directory (default OUTPUT.ckpt; with --shard, OUTPUT). Put it outside "
        "a Nextflow work dir to survive task retries.")] = None,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Flush a checkpoint part every N sequences per "
                                                  "device and model.")] = 10_000,
    devices: Annotated[str, typer.Option(help="auto, cpu, cpu:N (N CPU processes), cuda (all GPUs), "
                                         "cuda:0,1,...: one process per device.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16.")] = "auto",
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes per device (tokenization).")] = 2,
    prefetch_factor: Annotated[int, typer.Option(min=1, help="Packs prefetched per worker.")] = 2,
    token_budget: Annotated[str, typer.Option(help="Tokens per pack: auto (from free GPU memory and the "
                                              "model's shape) or N.")] = "auto",
    backend: Annotated[str, typer.Option(help="Attention backend (auto, sdpa, flex, torch_varlen, flash_attn).")]
    = "auto",
    telemetry: Annotated[Path | None, typer.Option(help="Telemetry JSON (default OUTPUT.telemetry.json).")] = None,
    shard: Annotated[str | None, typer.Option(help="i/n: embed only frame-table rows i, i+n, ... (Nextflow "
                                              "splitting); combine shards with `virnucpro aggregate`.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard an existing checkpoint / output.")] = False,
    keep_checkpoint: Annotated[bool, typer.Option("--keep-checkpoint", help="Keep the checkpoint directory after "
                                                  "the feature file is written.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (on a terminal).")] = True,
    cpu_threads: Annotated[int | None, typer.Option(min=1, help="Torch threads per CPU device process (default: "
                                                    "cores / devices).")] = None,
) -> None:
    """Embed every frame with DNABERT-S (nucleotide) and ESM-2 (protein); resumable: rerun the same command after
    an interruption. Exit codes: 0 done, 143 stopped by SIGTERM / 130 by SIGINT after checkpointing, 5 checkpoint
    belongs to other inputs or models."""
    from virnucpro.engine.runner import EmbedConfig, embed_frames
    from virnucpro.engine.worklist import parse_shard

    cfg = EmbedConfig(frames=frames, models={"esm2": esm_model, "dnabert": dnabert_model}, output=output,
                      checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, devices=devices, dtype=dtype,
                      workers=workers, prefetch_factor=prefetch_factor, token_budget=_budget(token_budget),
                      backend=backend, telemetry=telemetry, shard=parse_shard(shard), overwrite=overwrite,
                      keep_checkpoint=keep_checkpoint, progress=progress, cpu_threads=cpu_threads,
                      command=list(sys.argv))
    result = embed_frames(cfg)
    path = telemetry if telemetry is not None else Path(f"{output}.telemetry.json")
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if result.get("already_complete"):
        typer.echo(f"{output}: already complete for this frame table (use --overwrite to recompute)")
        return
    rates = ", ".join(f"{kind} {v['tokens_per_s']:.0f} tokens/s" for kind, v in result["per_model"].items())
    typer.echo(f"embedded {result['frames']} frames in {result['wall_s']:.1f} s ({rates}); telemetry {path}")


@app.command("aggregate")
def aggregate_command(
    frames: Annotated[Path, typer.Option("--frames", help="The frame table every shard was embedded from.")],
    shards: Annotated[list[Path], typer.Argument(help="Shard / checkpoint directories written by embed-frames.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Feature file (bundle directory) to write.")],
) -> None:
    """Check that every frame is embedded exactly once by each model (dims, dtype, no NaN/Inf) across the shard
    directories, and write the feature file that `predict` reads."""
    from virnucpro.engine.aggregate import aggregate_checkpoints
    from virnucpro.engine.runner import configure_logging

    configure_logging()
    path = aggregate_checkpoints(frames, list(shards), output)
    typer.echo(f"wrote {path}")
