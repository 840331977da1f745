"""Throughput of the packed DNABERT-S forward vs a good padded baseline, measured in the same run.

Model: DNABERT-S-shaped (12 layers, hidden 768, 12 heads, FFN 3072, vocab 4096), random weights written in the
published on-disk format and loaded by `load_dnabert_encoder`, run in fp16 (or --dtype).
Workloads (random DNA, tokenized by the model's BPE tokenizer):
  reads: uniform 150-nt reads (the archive's benchmark shape)     wide: lengths uniform in 100..3000 nt
Ours: length-sorted sequences packed greedily up to --budget tokens, `embed_packed` per pack, for every attention
backend that can run ALiBi on the device (flash_attn, flex; sdpa only with --include-sdpa on CUDA: it is the
per-sequence fallback), in each --compile scope: "layer" (whole layers compiled, FlexAttention in the graph: the
CUDA default of load_dnabert_encoder), "mlp" (only the gated MLP, the previous default), "off" (eager); flex with
"layer" also with each extra --flex-blocks size (64: less attention work wasted on ~37-token reads). Variant names:
backend+scope[/bN]; every variant's options (compile scope, mode, flex block) are written to the JSON.
Baseline: the same weights run padded: length-sorted batches of at most --budget padded tokens, every linear layer
over [B, L, hidden], attention = torch SDPA with a float mask = ALiBi bias + key-padding -inf, mean over real tokens;
on CUDA its gated MLP is our compiled one (torch.compile, as "mlp"), so it is a strong baseline, not a naive one.
Both sides get their inputs already on the device (model throughput, not input pipeline), run one untimed warm-up
pass (torch.compile / autotuning), then --repeats timed passes; the best pass counts. Tokens/s counts real tokens
only ([CLS]/[SEP] included, padding never). The embeddings of both sides are compared (cosine) as a sanity check.

GPU (the lead runs this on the H200; about 2-3 minutes with the compiles, results written after each workload):
    python bench/bench_dnabert.py --device cuda --output bench/results/dnabert-h200-$(date -u +%Y%m%d).json
    (add --compile-mode max-autotune-no-cudagraphs to let Inductor autotune matmuls and flex tiles: longer compile)
CPU smoke check (tiny model, a few hundred sequences; checks the script, measures nothing useful):
    python bench/bench_dnabert.py --device cpu --smoke --output /tmp/dnabert-smoke.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from virnucpro.models import attention
from virnucpro.models.dnabert import (DNABERT, load_dnabert_encoder, load_dnabert_tokenizer, mean_per_sequence,
                                      save_tiny_dnabert)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FULL = dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072, vocab_size=4096)
SMOKE = dict(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128, vocab_size=256)
# SPEC targets for DNABERT-S on one H200.
TARGETS = {"reads": {"tokens_per_s": 1.5e6, "speedup": 1.5}, "wide": {"speedup": 2.0}}
STD = 0.03  # weight scale of the random model, as the GPU test (tests/gpu/test_dnabert_gpu.py says why)


# ------------------------------------------------------------------------------------------------ workloads
def random_dna(lengths: list[int], seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 4, (sum(lengths),), generator=g, dtype=torch.uint8).numpy()
    text = np.frombuffer(b"ACGT", dtype=np.uint8)[codes].tobytes().decode()
    out, offset = [], 0
    for n in lengths:
        out.append(text[offset:offset + n])
        offset += n
    return out


def workload(name: str, count: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    if name == "reads":
        return [150] * count
    return torch.randint(100, 3001, (count,), generator=g).tolist()


def sorted_packs(tokens: list[list[int]], budget: int) -> list[list[int]]:
    """Length-sorted greedy packs of at most `budget` tokens (a longer sequence runs alone), as the engine does."""
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
    groups, current, used = [], [], 0
    for i in order:
        if current and used + len(tokens[i]) > budget:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += len(tokens[i])
    return groups + [current] if current else groups


def padded_batches(tokens: list[list[int]], budget: int) -> list[list[int]]:
    """Length-sorted batches with batch * longest <= budget padded tokens."""
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
    groups, current = [], []
    for i in order:
        if current and (len(current) + 1) * len(tokens[i]) > budget:
            groups.append(current)
            current = []
        current.append(i)
    return groups + [current] if current else groups


# ------------------------------------------------------------------------------------------------ runners
def stage_packs(tokens, groups, device):
    staged = []
    for group in groups:
        seqs = [tokens[i] for i in group]
        lengths = torch.tensor([len(s) for s in seqs])
        cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lengths, 0)
        ids = torch.tensor([t for s in seqs for t in s], dtype=torch.int64)
        staged.append((ids.to(device), cu.to(device), int(lengths.max())))
    return staged


def stage_padded(tokens, groups, device):
    staged = []
    for group in groups:
        seqs = [tokens[i] for i in group]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.int64)
        mask = torch.zeros(len(seqs), width, dtype=torch.bool)
        for row, s in enumerate(seqs):
            ids[row, :len(s)] = torch.tensor(s)
            mask[row, :len(s)] = True
        staged.append((ids.to(device), mask.to(device)))
    return staged


class PaddedBaseline:
    """The padded forward over a [B, L] batch with SDPA + float ALiBi/padding mask, sharing our model's weights."""

    def __init__(self, model: DNABERT, max_len: int):
        self.model = model
        cfg = model.config
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        device, dtype = model.embeddings.tok.weight.device, model.embeddings.tok.weight.dtype
        # Built once for the longest batch and sliced, as MosaicBERT keeps its `alibi` tensor.
        self.alibi = attention.alibi_bias(attention.alibi_slopes(self.heads), max_len, dtype=dtype, device=device)

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = self.model
        B, L = ids.shape
        x = m.embeddings(ids)
        pad = torch.zeros(B, 1, 1, L, dtype=x.dtype, device=x.device).masked_fill(~mask[:, None, None, :], -math.inf)
        bias = self.alibi[None, :, :L, :L] + pad  # [B, H, L, L]
        scale = 1.0 / math.sqrt(self.head_dim)
        for layer in m.layers:
            a = layer.attn
            q, k, v = a.wqkv(x).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
            x = a.norm(x + a.wo(y.transpose(1, 2).reshape(B, L, -1)))
            x = layer.mlp(x)
        weights = mask.to(torch.float32)
        return (x.float() * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, batches, device, repeats: int) -> tuple[float, list[float], float]:
    """Warm-up pass (untimed, compiles), then `repeats` timed passes; returns best seconds, all, warm-up seconds."""
    start = time.perf_counter()
    for b in batches:
        fn(*b)
    sync(device)
    warmup = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for b in batches:
            fn(*b)
        sync(device)
        runs.append(time.perf_counter() - start)
    return min(runs), runs, warmup


def kernel_profile(fn, batches, device, top: int = 15) -> dict:
    """GPU kernels of one pass over `batches` (torch.profiler), the `top` by device time: where the time goes."""
    try:
        from torch.profiler import ProfilerActivity, profile

        sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for b in batches:
                fn(*b)
            sync(device)
        rows = [e for e in prof.key_averages() if e.self_device_time_total > 0]
        total = sum(e.self_device_time_total for e in rows)
        rows.sort(key=lambda e: e.self_device_time_total, reverse=True)
        return {"batches": len(batches), "device_ms": round(total / 1e3, 2),
                "top": [{"kernel": e.key[:160], "ms": round(e.self_device_time_total / 1e3, 2), "calls": e.count,
                         "share": round(e.self_device_time_total / total, 3)} for e in rows[:top]]}
    except Exception as exc:  # a profiling failure must not cost the measurement
        return {"error": f"{type(exc).__name__}: {exc}"}


def collect(fn, batches, groups, n, hidden) -> torch.Tensor:
    out = torch.empty(n, hidden)
    for b, group in zip(batches, groups):
        out[group] = fn(*b).float().cpu()
    return out


# ------------------------------------------------------------------------------------------------ main
def environment(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        import tokenizers

        info["tokenizers"] = tokenizers.__version__
    except ImportError:
        pass
    info["flash_attn"] = attention.has_flash_attn()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--backends", default="",
                        help="comma list; default on CUDA: every ALiBi-capable backend; on CPU: sdpa (what auto uses)")
    parser.add_argument("--include-sdpa", action="store_true", help="also time the per-sequence sdpa fallback")
    parser.add_argument("--compile", default=None,
                        help="comma list of compile scopes to time per backend: layer, mlp, off "
                             "(default: mlp,layer on CUDA, off on CPU)")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode for the compiled variants (default: torch's default; "
                             "e.g. max-autotune-no-cudagraphs)")
    parser.add_argument("--flex-blocks", default=None,
                        help="comma list of extra FlexAttention block sizes timed with flex+layer "
                             "(default: 64 on CUDA)")
    parser.add_argument("--reads", type=int, default=50_000, help="number of 150-nt reads (~2M tokens)")
    parser.add_argument("--wide", type=int, default=5_000, help="number of 100..3000-nt sequences (~2M tokens)")
    parser.add_argument("--budget", type=int, default=65_536, help="tokens per pack / padded tokens per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--profile-batches", type=int, default=None,
                        help="profile this many packs/batches of every variant and the baseline, top kernels into the "
                             "JSON (default: 4 on CUDA, 0 elsewhere)")
    parser.add_argument("--smoke", action="store_true", help="tiny model and workload: checks the script only")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / f"dnabert-{dt.date.today():%Y%m%d}.json")
    args = parser.parse_args()
    if args.smoke:
        args.reads, args.wide, args.budget, args.repeats = min(args.reads, 300), min(args.wide, 24), 4096, 1

    device = torch.device(args.device)
    args.dtype = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    profile_batches = args.profile_batches if args.profile_batches is not None else (
        4 if device.type == "cuda" and not args.smoke else 0)
    dtype = DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda asked for, but CUDA is not available")
    if args.backends:
        backends = args.backends.split(",")
    elif device.type == "cuda":
        backends = [b for b in attention.available_backends(device=device, dtype=dtype, alibi=True)
                    if b != "sdpa" or args.include_sdpa]
    else:
        # Eager FlexAttention on CPU materialises the whole pack's score matrix: not worth timing.
        backends = ["sdpa"]
    shape = SMOKE if args.smoke else FULL

    with tempfile.TemporaryDirectory(prefix="bench-dnabert-") as tmp:
        model_dir = save_tiny_dnabert(Path(tmp) / "model", seed=args.seed, std=STD, **shape)
        tokenizer = load_dnabert_tokenizer(model_dir)
        scopes = (args.compile or ("mlp,layer" if device.type == "cuda" else "off")).split(",")
        extra_blocks = [int(b) for b in (args.flex_blocks if args.flex_blocks is not None
                                         else ("64" if device.type == "cuda" else "")).split(",") if b]
        encoders = {}
        for b in backends:
            for scope in scopes:
                compile_arg = False if scope == "off" else scope
                blocks = [None] + (extra_blocks if b == "flex" and scope == "layer" else [])
                for block in blocks:
                    name = f"{b}+{scope}" + (f"/b{block}" if block else "")
                    encoders[name] = load_dnabert_encoder(model_dir, device=device, dtype=dtype, backend=b,
                                                          compile=compile_arg, compile_mode=args.compile_mode,
                                                          flex_block_size=block)
        # The baseline borrows this model's layers: its gated MLP compiled on CUDA (as "mlp"), eager on CPU.
        baseline_compiled = device.type == "cuda"
        reference_model = load_dnabert_encoder(model_dir, device=device, dtype=dtype, backend="sdpa",
                                               compile="mlp" if baseline_compiled else False,
                                               compile_mode=args.compile_mode).model

    result = {
        "benchmark": "dnabert", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "smoke": args.smoke,
        "environment": environment(device), "device": str(device), "dtype": args.dtype,
        "model": {"shape": shape, "weights": f"random (std {STD}), published on-disk format"},
        "budget_tokens": args.budget, "repeats": args.repeats, "backends": list(encoders),
        "variants": {name: {"backend": e.backend, **e.options} for name, e in encoders.items()},
        "compile_mode": args.compile_mode,
        "env": {k: os.environ[k] for k in ("VIRNUCPRO_NO_COMPILE", "VIRNUCPRO_FLEX_DYNAMIC", "VIRNUCPRO_FLEX_BLOCK",
                                          "VIRNUCPRO_COMPILE_MODE") if k in os.environ},
        "baseline": "padded, length-sorted batches (batch*longest <= budget), SDPA with float ALiBi + padding mask"
                    + ("; gated MLP compiled (torch.compile)" if baseline_compiled else "; eager"),
        "workloads": {},
    }
    for name, count in (("reads", args.reads), ("wide", args.wide)):
        lengths = workload(name, count, args.seed + 1)
        tokens = tokenizer.encode_batch(random_dna(lengths, args.seed + 2))
        real_tokens = sum(map(len, tokens))
        entry = {"sequences": count, "nucleotides": sum(lengths), "tokens": real_tokens,
                 "tokens_per_sequence": {"min": min(map(len, tokens)), "max": max(map(len, tokens)),
                                         "mean": round(real_tokens / count, 1)},
                 "ours": {}}
        pack_groups = sorted_packs(tokens, args.budget)
        packs = stage_packs(tokens, pack_groups, device)
        entry["packs"] = len(packs)
        entry["pack_efficiency"] = round(real_tokens / (len(packs) * args.budget), 3)
        ours_out = None
        for backend, encoder in encoders.items():
            best, runs, warm = timed(encoder.embed_packed, packs, device, args.repeats)
            entry["ours"][backend] = {"seconds": round(best, 4), "runs": [round(r, 4) for r in runs],
                                      "warmup_seconds": round(warm, 2),
                                      "tokens_per_s": round(real_tokens / best), "sequences_per_s": round(count / best),
                                      # after the run: a failed whole-layer compile shows up as compile_fallback
                                      "options": dict(encoder.options)}
            print(f"{name:6s} ours/{backend:18s} {real_tokens / best / 1e6:8.3f} M tokens/s  ({best:.3f} s)", flush=True)
            if profile_batches:
                entry.setdefault("profile", {})[backend] = kernel_profile(encoder.embed_packed,
                                                                          packs[:profile_batches], device)
            if ours_out is None:
                ours_out = collect(encoder.embed_packed, packs, pack_groups, count, encoder.hidden_size)
        del packs
        if not args.no_baseline:
            groups = padded_batches(tokens, args.budget)
            batches = stage_padded(tokens, groups, device)
            baseline = PaddedBaseline(reference_model, max(map(len, tokens)))
            best, runs, warm = timed(baseline, batches, device, args.repeats)
            padded_tokens = sum(ids.numel() for ids, _ in batches)
            entry["baseline"] = {"seconds": round(best, 4), "runs": [round(r, 4) for r in runs],
                                 "warmup_seconds": round(warm, 2), "batches": len(batches),
                                 "padding_fraction": round(1 - real_tokens / padded_tokens, 3),
                                 "tokens_per_s": round(real_tokens / best), "sequences_per_s": round(count / best)}
            print(f"{name:6s} padded SDPA baseline {real_tokens / best / 1e6:8.3f} M tokens/s  ({best:.3f} s)",
                  flush=True)
            if profile_batches:
                entry.setdefault("profile", {})["baseline"] = kernel_profile(baseline, batches[:profile_batches],
                                                                             device)
            if ours_out is not None:
                base_out = collect(baseline, batches, groups, count, reference_model.config.hidden_size)
                entry["agreement_min_cosine"] = round(
                    F.cosine_similarity(ours_out.double(), base_out.double(), dim=-1).min().item(), 6)
            entry["speedup_vs_baseline"] = {b: round(o["tokens_per_s"] / entry["baseline"]["tokens_per_s"], 3)
                                            for b, o in entry["ours"].items()}
            del batches
        if entry["ours"]:
            best_backend = max(entry["ours"], key=lambda b: entry["ours"][b]["tokens_per_s"])
            target = TARGETS[name]
            checks = {}
            if "tokens_per_s" in target:
                checks["tokens_per_s"] = entry["ours"][best_backend]["tokens_per_s"] >= target["tokens_per_s"]
            if "speedup_vs_baseline" in entry:
                checks["speedup"] = entry["speedup_vs_baseline"][best_backend] >= target["speedup"]
            entry["targets"] = {"best_backend": best_backend, **target,
                                "met": checks if not args.smoke and device.type == "cuda" else "n/a (not an H200 run)"}
        result["workloads"][name] = entry
        if device.type == "cuda":
            torch.cuda.empty_cache()
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        # Written after every workload: a run cut short by a time limit still leaves what it measured.
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
