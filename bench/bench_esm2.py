#!/usr/bin/env python
"""ESM-2 throughput: our packed forward (each attention backend) vs Hugging Face EsmModel (sdpa, padded,
length-sorted batches), same random weights, same proteins, same run.

On the H200 (ESM-2 3B-shaped, fp16; takes a few minutes, most of it building and warming the models):
    python bench/bench_esm2.py --device cuda --dtype fp16 --preset esm2_t36_3B --compile-blocks
CPU plumbing check (tiny model, seconds):
    python bench/bench_esm2.py --device cpu --smoke

Throughput counts real tokens (<cls> + residues + <eos>; padding never counts) over the timed passes, between
two device synchronisations. Packs and padded batches are prepared on the device before timing, so the figures
are model compute, the part the packing changes. Writes JSON to --output (default bench/results/esm2-<date>.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from virnucpro.models import attention  # noqa: E402
from virnucpro.models.esm2 import ESM2Config, ESM2Encoder, PRESETS, build_esm2, to_hf_state_dict  # noqa: E402
from virnucpro.models.packing import pack_token_ids, plan_packs  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WORKLOADS = {  # protein length ranges (aa), uniform
    "wide": (10, 1022),  # everything the model accepts
    "frames500": (50, 166),  # kept frames of 500-nt chunks
    "frames300": (30, 100),  # kept frames of 300-nt chunks / 150-nt read pairs
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_tokens(workload: str, total_tokens: int, seed: int) -> list[list[int]]:
    lo, hi = WORKLOADS[workload]
    g = torch.Generator().manual_seed(seed)
    tokens, used = [], 0
    while used < total_tokens:
        n = int(torch.randint(lo, hi + 1, (1,), generator=g))
        ids = [0, *torch.randint(4, 24, (n,), generator=g).tolist(), 2]  # <cls> residues <eos>
        tokens.append(ids)
        used += len(ids)
    return tokens


def time_passes(run, device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def bench_packed(model, backend: str, tokens, budget: int, device, repeats: int, compile_blocks: bool = False):
    encoder = ESM2Encoder(model, backend=backend, compile_blocks=compile_blocks)
    lengths = [len(t) for t in tokens]
    groups = plan_packs(lengths, budget)
    packs = [pack_token_ids([tokens[i] for i in g]).to(device) for g in groups]
    outputs: dict[int, torch.Tensor] = {}

    def run():
        for g, p in zip(groups, packs):
            out = encoder.embed_packed(p.input_ids, p.cu_seqlens, p.max_seqlen)
            outputs[g[0]] = (g, out)

    run()  # warm-up: kernels, autotuning, FlexAttention compilation (static, then dynamic lengths)
    run()
    times = time_passes(run, device, repeats)
    emb = torch.empty(len(tokens), model.config.hidden_size)
    for g, out in outputs.values():
        emb[g] = out.float().cpu()
    real = sum(lengths)
    return {"backend": encoder.backend, "compiled_blocks": encoder.compiled_blocks, "tokens_per_s": real / statistics.median(times),
            "seconds_median": statistics.median(times), "seconds_all": [round(t, 4) for t in times],
            "packs": len(packs), "token_budget": budget,
            "packing_efficiency": real / (budget * len(packs))}, emb


def build_hf(model, device, dtype):
    from transformers import EsmConfig, EsmModel

    cfg = EsmConfig(**model.config.to_hf())
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        hf = EsmModel(cfg, add_pooling_layer=False)
    state = {k.removeprefix("esm."): v for k, v in to_hf_state_dict(model).items() if k.startswith("esm.")}
    missing, _ = hf.load_state_dict(state, strict=False)
    assert not [k for k in missing if "inv_freq" not in k and "position_ids" not in k], missing
    return hf.to(dtype).eval()


def bench_hf(hf, tokens, budget: int, device, repeats: int):
    """Padded baseline: length-sorted batches, each at most `budget` padded tokens (width x rows)."""
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
    batches, current = [], []
    for i in order:
        width = len(tokens[i])  # sorted ascending: the newest is the widest
        if current and width * (len(current) + 1) > budget:
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    prepared = []
    for b in batches:
        width = max(len(tokens[i]) for i in b)
        ids = torch.full((len(b), width), 1, dtype=torch.long)
        mask = torch.zeros(len(b), width, dtype=torch.long)
        for j, i in enumerate(b):
            ids[j, :len(tokens[i])] = torch.tensor(tokens[i])
            mask[j, :len(tokens[i])] = 1
        prepared.append((b, ids.to(device), mask.to(device)))
    outputs = []

    def run():
        outputs.clear()
        with torch.inference_mode():
            for b, ids, mask in prepared:
                outputs.append((b, hf(input_ids=ids, attention_mask=mask).last_hidden_state))

    run()
    times = time_passes(run, device, repeats)
    emb = torch.empty(len(tokens), hf.config.hidden_size)
    for b, hidden in outputs:
        for j, i in enumerate(b):
            emb[i] = hidden[j, 1:len(tokens[i]) - 1].float().mean(0).cpu()
    real = sum(len(t) for t in tokens)
    padded = sum(ids.numel() for _, ids, _ in prepared)
    return {"implementation": "transformers.EsmModel sdpa, padded, length-sorted batches",
            "tokens_per_s": real / statistics.median(times), "seconds_median": statistics.median(times),
            "seconds_all": [round(t, 4) for t in times], "batches": len(prepared), "padded_token_budget": budget,
            "padding_efficiency": real / padded}, emb


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "triton", "flash_attn"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken: record as missing
            out[name] = None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: fp16 on cuda, fp32 on cpu")
    ap.add_argument("--preset", default="esm2_t36_3B", choices=list(PRESETS))
    ap.add_argument("--layers", type=int, default=None, help="override the preset's layer count (quick runs)")
    ap.add_argument("--smoke", action="store_true", help="tiny config, few tokens: checks the plumbing on CPU")
    ap.add_argument("--workload", default="wide", choices=list(WORKLOADS))
    ap.add_argument("--total-tokens", type=int, default=400_000, help="real tokens per timed pass")
    ap.add_argument("--token-budget", type=int, default=65536, help="tokens per pack (ours) / padded batch (HF)")
    ap.add_argument("--backends", nargs="*", default=None, help="default: every backend available here")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--compile-blocks", action="store_true",
                    help="also measure flash_attn/torch_varlen with torch.compile'd blocks (run last: compiling "
                         "modifies the model's layers in place)")
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    args.dtype = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    dtype = DTYPES[args.dtype]
    if args.smoke:
        cfg = ESM2Config(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=256)
        args.total_tokens, args.token_budget, args.repeats = min(args.total_tokens, 3000), 1024, 1
    else:
        cfg = PRESETS[args.preset]
    if args.layers:
        cfg = ESM2Config(**{**asdict(cfg), "num_layers": args.layers})
    backends = args.backends or attention.available_backends(device=device, dtype=dtype, alibi=False)
    if device.type == "cpu" and not args.backends:
        backends = ["sdpa"]  # flex on CPU is the unfused reference: not a throughput figure

    torch.backends.cuda.matmul.allow_tf32 = True
    tokens = make_tokens(args.workload, args.total_tokens, seed=0)
    t0 = time.perf_counter()
    model = build_esm2(cfg, None, device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    results, embeddings = {}, {}
    variants = [(b, False) for b in backends]
    if args.compile_blocks:
        variants += [(b, True) for b in backends if b in ("flash_attn", "torch_varlen")]
    for backend, compiled in variants:
        name = backend + ("+compiled" if compiled else "")
        print(f"[bench] ours/{name} ...", file=sys.stderr, flush=True)
        results[name], embeddings[name] = bench_packed(model, backend, tokens, args.token_budget, device,
                                                       args.repeats, compile_blocks=compiled)
        print(f"[bench] ours/{name}: {results[name]['tokens_per_s']:,.0f} tokens/s", file=sys.stderr)
    baseline = None
    agreement = {}
    if not args.no_baseline:
        print("[bench] baseline HF EsmModel ...", file=sys.stderr, flush=True)
        hf = build_hf(model, device, dtype)
        baseline, hf_emb = bench_hf(hf, tokens, args.token_budget, device, args.repeats)
        print(f"[bench] baseline: {baseline['tokens_per_s']:,.0f} tokens/s", file=sys.stderr)
        del hf
        for b, emb in embeddings.items():
            agreement[b] = F.cosine_similarity(emb.double(), hf_emb.double(), dim=-1).min().item()
    report = {
        "benchmark": "esm2-forward",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": versions(),
        "model": {"preset": None if args.smoke else args.preset, "config": asdict(cfg), "weights": "random",
                  "dtype": args.dtype, "build_seconds": round(build_s, 2)},
        "workload": {"name": args.workload, "lengths_aa": WORKLOADS[args.workload], "sequences": len(tokens),
                     "tokens": sum(map(len, tokens)), "token_budget": args.token_budget, "repeats": args.repeats},
        "results": results,
        "baseline": baseline,
        "speedup_vs_baseline": {b: r["tokens_per_s"] / baseline["tokens_per_s"] for b, r in results.items()}
        if baseline else None,
        "min_cosine_vs_baseline": agreement or None,
    }
    out = args.output or REPO / "bench" / "results" / f"esm2-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("hardware", "speedup_vs_baseline", "min_cosine_vs_baseline")}))
    print(f"[bench] wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
