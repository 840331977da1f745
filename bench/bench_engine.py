#!/usr/bin/env python
"""End-to-end `embed-frames` throughput on a synthetic 150-nt read workload: reads -> `prepare` frames -> the
engine (DNABERT-S pass + ESM-2 pass, packing, overlapped streams, checkpoints, aggregation into the feature file).

On the H200 (ESM-2 3B-shaped random weights made on the GPU + a DNABERT-S-shaped random folder, fp16, one GPU and,
when visible, two):
    python bench/bench_engine.py                       # 50k reads; --reads 1000000 for the archive's 1M shape
CPU plumbing check (tiny models, seconds):
    python bench/bench_engine.py --device cpu --smoke

Figures are end to end (wall time of the whole command, start-up, checkpoints and aggregation included) plus the
engine's own telemetry per model (tokens/s over the pass, GPU busy from NVML, compute-stream occupancy from CUDA
events, waits). Writes JSON (hardware, versions, command, workload, figures) to --output
(default bench/results/engine-<date>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from virnucpro.engine.runner import EmbedConfig, embed_frames  # noqa: E402

# 150-nt reads of random sequence with this base composition (GC-rich: fewer stop codons, so about as many kept
# frames per read as coding sequence gives; uniform ACGT keeps ~0.5 frames per read).
COMPOSITIONS = {"gc-rich": b"ACGTGGCC", "uniform": b"ACGT"}


def make_reads(path: Path, reads: int, length: int, composition: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(COMPOSITIONS[composition], dtype=np.uint8)
    block = 100_000
    with open(path, "wb") as handle:
        for start in range(0, reads, block):
            n = min(block, reads - start)
            seqs = alphabet[rng.integers(0, len(alphabet), size=(n, length))]
            lines = [b">read%d\n%s\n" % (start + i, seqs[i].tobytes()) for i in range(n)]
            handle.write(b"".join(lines))


def make_models(root: Path, smoke: bool, preset: str) -> dict[str, str]:
    from virnucpro.models.dnabert import save_tiny_dnabert

    if smoke:
        from virnucpro.models.esm2 import save_tiny_esm2

        esm, _ = save_tiny_esm2(root, seed=0)
        return {"esm2": str(esm), "dnabert": str(save_tiny_dnabert(root / "dnabert", seed=0))}
    # DNABERT-S shape (12 x 768, FFN 3072, BPE vocabulary 4096) with random weights, in the published format:
    # 117M parameters write and load in seconds, so the real folder loader is part of the benchmark.
    dnabert = save_tiny_dnabert(root / "dnabert", seed=0, num_layers=12, hidden_size=768, num_heads=12,
                                intermediate_size=3072, vocab_size=4096)
    # ESM-2 3B shape: random weights built directly on each GPU (engine spec random:<preset>), never on disk.
    return {"esm2": f"random:{preset}", "dnabert": str(dnabert)}


def hardware() -> dict:
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "transformers", "polars", "pynvml"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # absent or without a version: say so instead of failing the benchmark
            info[name] = None
    if torch.cuda.is_available():
        info["gpus"] = [{"name": torch.cuda.get_device_name(i),
                         "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                        for i in range(torch.cuda.device_count())]
    return info


def run(frames: Path, models: dict, workdir: Path, devices: str, args) -> dict:
    out = workdir / f"features-{devices.replace(':', '').replace(',', '-')}"
    cfg = EmbedConfig(frames=frames, models=models, output=out, devices=devices, dtype=args.dtype,
                      workers=args.workers, token_budget=args.token_budget, checkpoint_every=args.checkpoint_every,
                      backend=args.backend, progress=False, overwrite=True, command=sys.argv)
    start = time.perf_counter()
    telemetry = embed_frames(cfg)
    wall = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    per_model = telemetry["per_model"]
    return {
        "devices": devices,
        "wall_s": wall,
        "frames_per_s_end_to_end": telemetry["frames"] / wall,
        "length_pass_s": telemetry["length_pass_s"],
        "aggregate_s": telemetry["aggregate_s"],
        "per_model": per_model,
        "passes": telemetry["passes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true", help="tiny models, few reads: a plumbing check")
    parser.add_argument("--reads", type=int, default=None, help="150-nt reads (default 50000; smoke 300)")
    parser.add_argument("--read-length", type=int, default=150)
    parser.add_argument("--composition", default="gc-rich", choices=sorted(COMPOSITIONS))
    parser.add_argument("--preset", default="esm2_t36_3B", help="ESM-2 preset of the random model")
    parser.add_argument("--dtype", default=None, help="default fp16 on cuda, fp32 on cpu")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers per device")
    parser.add_argument("--token-budget", type=int, default=None, help="default: derived from free memory")
    parser.add_argument("--checkpoint-every", type=int, default=10_000)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--max-gpus", type=int, default=2, help="also run on 2 GPUs when visible (1: skip)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch (default a temp dir, removed)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_engine: --device cuda but CUDA is not available (use --device cpu --smoke)")
    args.dtype = args.dtype or ("fp16" if args.device == "cuda" else "fp32")
    args.workers = args.workers if args.workers is not None else min(8, max(1, (os.cpu_count() or 2) // 2))
    reads = args.reads or (300 if args.smoke else 50_000)
    output = args.output or REPO / "bench" / "results" / f"engine-{time.strftime('%Y%m%d-%H%M%S')}.json"
    scratch = Path(tempfile.mkdtemp(prefix="bench-engine-")) if args.workdir is None else args.workdir
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        from virnucpro.preprocess.prepare import prepare

        t0 = time.perf_counter()
        make_reads(scratch / "reads.fa", reads, args.read_length, args.composition, seed=0)
        stats = prepare(scratch / "reads.fa", scratch / "frames.parquet", chunk_length=300)
        prepare_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        models = make_models(scratch / "models", args.smoke, args.preset)
        models_s = time.perf_counter() - t0
        import polars as pl

        frames = pl.read_parquet(scratch / "frames.parquet", columns=["protein", "nucleotide"])
        workload = {"reads": reads, "read_length": args.read_length, "composition": args.composition,
                    "frames": len(frames), "protein_residues": int(frames["protein"].str.len_bytes().sum()),
                    "nucleotides": int(frames["nucleotide"].str.len_bytes().sum()),
                    "prepare_s": prepare_s, "make_models_s": models_s, "prepare_stats": str(stats)}
        del frames
        runs = []
        if args.device == "cpu":
            runs.append(run(scratch / "frames.parquet", models, scratch, "cpu", args))
        else:
            runs.append(run(scratch / "frames.parquet", models, scratch, "cuda:0", args))
            if args.max_gpus >= 2 and torch.cuda.device_count() >= 2:
                runs.append(run(scratch / "frames.parquet", models, scratch, "cuda:0,1", args))
        figures = {}
        one = runs[0]
        figures["reads_per_s_end_to_end"] = reads / one["wall_s"]
        figures["projected_1M_reads_min"] = 1e6 / figures["reads_per_s_end_to_end"] / 60
        for kind, m in one["per_model"].items():
            figures[f"{kind}_tokens_per_s"] = m["tokens_per_s"]
            figures[f"{kind}_gpu_busy"] = m["gpu_busy"]
            figures[f"{kind}_compute_stream_busy"] = m["compute_stream_busy"]
            figures[f"{kind}_packing_efficiency"] = m["packing_efficiency"]
        if len(runs) > 1:
            figures["two_gpu_speedup_end_to_end"] = one["wall_s"] / runs[1]["wall_s"]
            for kind in one["per_model"]:
                figures[f"two_gpu_speedup_{kind}"] = (runs[1]["per_model"][kind]["tokens_per_s"]
                                                      / one["per_model"][kind]["tokens_per_s"])
        else:
            figures["two_gpu"] = "not run: fewer than 2 GPUs visible" if args.device == "cuda" else "cpu run"
        result = {"benchmark": "engine", "command": sys.argv, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "hardware": hardware(), "settings": {k: str(v) for k, v in vars(args).items()},
                  "models": models, "workload": workload, "figures": figures, "runs": runs}
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(json.dumps(figures, indent=2, default=str))
        print(f"wrote {output}")
    finally:
        if args.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
