"""`virnucpro embed` (one mean-pooled embedding per FASTA record) and `virnucpro make-tiny-models`.

`embed` is the simple in-process path: tokenize everything, pack length-sorted sequences into token-budget packs,
run the packed encoder, write rows back in input order. The multi-GPU, checkpointed, overlapped engine reuses the
same tokenizer / encoder / packing pieces.
"""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from virnucpro.cli.app import app
from virnucpro.errors import InputError, ModelError


class ModelKind(str, Enum):
    esm2 = "esm2"
    dnabert = "dnabert"


class DType(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Backend(str, Enum):
    auto = "auto"
    flash_attn = "flash_attn"
    torch_varlen = "torch_varlen"
    flex = "flex"
    sdpa = "sdpa"


# Token budgets per pack when none is given: CPU packs stay small (the per-sequence path gains nothing from size);
# GPU packs are large enough to keep an H200 busy with ESM-2 3B in fp16 (activations stay well under 2 GiB).
DEFAULT_BUDGET = {"cpu": 8192, "cuda": 32768}


def _write_rows(writer, indices: list[int], rows: np.ndarray) -> None:
    """Rows of a length-sorted pack back to their input positions, one write per run of consecutive indices."""
    order = np.argsort(indices, kind="stable")
    idx = np.asarray(indices)[order]
    rows = rows[order]
    start = 0
    for end in range(1, len(idx) + 1):
        if end == len(idx) or idx[end] != idx[end - 1] + 1:
            writer.write_rows(int(idx[start]), {"embeddings": rows[start:end]})
            start = end


@app.command("embed")
def embed(
    model_kind: Annotated[ModelKind, typer.Option("--model-kind", help="Which language model.")],
    model_dir: Annotated[Path, typer.Option("--model-dir", help="HF model folder (ESM-2 also: fair-esm .pt).")],
    input: Annotated[Path, typer.Option("--input", "-i", help="FASTA (proteins for esm2, DNA for dnabert).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output embeddings bundle directory.")],
    dtype: Annotated[DType, typer.Option(help="Compute precision.")] = DType.fp32,
    device: Annotated[Device, typer.Option(help="Where to run the model.")] = Device.cpu,
    backend: Annotated[Backend, typer.Option(help="Attention backend; auto picks the fastest that fits.")] = Backend.auto,
    max_tokens_per_pack: Annotated[int | None, typer.Option(
        "--max-tokens-per-pack", min=1, help="Token budget per pack [default: 8192 on CPU, 32768 on CUDA].")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Write one mean-pooled embedding per FASTA record, in input order, with its id."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from virnucpro.io.embeddings import embeddings_writer
    from virnucpro.io.fasta import read_fasta
    from virnucpro.models.packing import pack_token_ids, plan_packs
    from virnucpro.models.registry import DTYPES, load_encoder, load_tokenizer

    kind = model_kind.value
    tokenizer = load_tokenizer(kind, model_dir)
    ids: list[str] = []
    tokens: list[list[int]] = []
    truncated = 0
    for record in read_fasta(input):
        if not record.sequence:
            raise InputError(f"{input}:{record.line}: record '{record.id}' has an empty sequence; nothing to embed")
        ids.append(record.id)
        encoded = tokenizer.encode(record.sequence)
        # ESM-2 outlier rule: the tokenizer truncates to the first 1024 residues, as the reference does.
        if kind == "esm2" and len(record.sequence) + 2 > len(encoded):
            truncated += 1
        tokens.append(encoded)

    encoder = load_encoder(kind, model_dir, device=device.value, dtype=DTYPES[dtype.value], backend=backend.value)
    budget = max_tokens_per_pack or DEFAULT_BUDGET[device.value]
    lengths = [len(t) for t in tokens]
    packs = plan_packs(lengths, budget)
    metadata = {"model_kind": kind, "model_dir": str(model_dir), "fingerprint": encoder.fingerprint,
                "dtype": dtype.value, "device": device.value, "backend": getattr(encoder, "backend", backend.value),
                "max_tokens_per_pack": budget, "input": str(input), "truncated_sequences": truncated}
    writer = embeddings_writer(output, len(ids), encoder.hidden_size, metadata=metadata)
    started = time.perf_counter()
    with Progress(TextColumn("[bold]embed[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), disable=quiet,
                  transient=False) as progress:
        task = progress.add_task(kind, total=len(ids), rate="")
        done_tokens = 0
        for pack_indices in packs:
            pack = pack_token_ids([tokens[i] for i in pack_indices]).to(encoder.device)
            rows = encoder.embed_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen)
            rows = rows.float().cpu().numpy()
            if not np.isfinite(rows).all():
                raise ModelError(f"{model_dir}: non-finite embedding in a pack of {len(pack_indices)} sequences "
                                 f"({dtype.value}); try --dtype fp32 or bf16")
            _write_rows(writer, pack_indices, rows)
            done_tokens += pack.num_tokens
            elapsed = max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=len(pack_indices), rate=f"{done_tokens / elapsed:,.0f} tok/s")
    writer.finalize(ids)
    if device.value == "cuda":
        torch.cuda.synchronize()
    note = f"; {truncated} longer than 1024 residues truncated (reference rule)" if truncated else ""
    typer.echo(f"{output}: {len(ids)} embeddings of dim {encoder.hidden_size} from {len(packs)} packs{note}",
               err=True)


@app.command("make-tiny-models")
def make_tiny_models(
    outdir: Annotated[Path, typer.Option("--outdir", help="Where to write esm2/, esm2-fair/tiny.pt, dnabert/.")],
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
) -> None:
    """Tiny randomly initialised ESM-2 and DNABERT-S in the real on-disk formats (for tests and -profile test)."""
    from virnucpro.models.dnabert import save_tiny_dnabert
    from virnucpro.models.esm2 import save_tiny_esm2

    outdir.mkdir(parents=True, exist_ok=True)
    hf, fair = save_tiny_esm2(outdir, seed=seed)
    dnabert = outdir / "dnabert"
    save_tiny_dnabert(dnabert, seed=seed)
    typer.echo(f"wrote {hf}, {fair}, {dnabert}")
