"""DNABERT-S on a GPU: every available attention backend, packed vs unpacked and fp16/bf16 vs fp32 [PACK-04, PREC-02].

Run on the GPU machine:  pytest -m gpu tests/gpu/test_dnabert_gpu.py -v
Without CUDA these tests FAIL (they are never silently skipped: a GPU run that saw no GPU must not look green).
With VIRNUCPRO_GPU_REPORT=/path/report.json set, one JSON line per backend/dtype (cosine minima) is appended to
/path/report.dnabert.json (a name of its own, beside the ESM-2 report).

The model is DNABERT-S-shaped (12 layers, hidden 768, 12 heads, FFN 3072, vocab 4096) with random weights, written in
the published on-disk format and loaded by the same code as the real checkpoint; lengths span 20..3000 nt.

Weight scale std 0.03 (1.5x the published initializer_range 0.02). The first H200 run used 0.05, where bf16 failed
(0.85 vs fp32): at that scale the 12-layer post-LN stack is chaotic. Measured on CPU: a single 2^-9 relative
perturbation of the fp32 input embeddings (one bf16 rounding) already moves the fp32 output to cosine 0.994, bf16's
deviation doubles layer after layer, and keeping residuals, LayerNorms, attention and GELU in fp32 does not help
(0.90 -> 0.91): no implementation could pass, so it tested the random weights, not the code. At 0.02 embeddings are
nearly collinear (pairwise cosine ~0.95), which flatters a raw cosine. At 0.03: bf16 vs fp32 0.9994 on CPU,
pairwise cosine ~0.5. Cosines are also reported after removing the fp32 batch mean (the part all sequences share).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from virnucpro.models import attention
from virnucpro.models.dnabert import load_dnabert_encoder, load_dnabert_tokenizer, save_tiny_dnabert
from virnucpro.models.packing import pack_token_ids

pytestmark = pytest.mark.gpu

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PACK_BUDGET = 16384  # tokens per pack: several packs, each mixing short and long sequences
STD = 0.03  # see the module docstring


def require_cuda() -> torch.device:
    assert torch.cuda.is_available(), "GPU test run without a usable CUDA device (torch.cuda.is_available() is False)"
    return torch.device("cuda")


def random_dna(length: int, g: torch.Generator) -> str:
    return "".join("ACGT"[i] for i in torch.randint(0, 4, (length,), generator=g).tolist())


def pack(token_lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    packed = pack_token_ids(token_lists)
    return packed.input_ids, packed.cu_seqlens, packed.max_seqlen


def packs_by_budget(token_lists: list[list[int]], budget: int) -> list[list[int]]:
    """Index groups in the given (unsorted) order, each within `budget` tokens; a longer sequence goes alone."""
    groups, current, used = [], [], 0
    for i, t in enumerate(token_lists):
        if current and used + len(t) > budget:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += len(t)
    return groups + [current] if current else groups


def embed_packed(encoder, tokens: list[list[int]]) -> torch.Tensor:
    out = torch.empty(len(tokens), encoder.hidden_size)
    for group in packs_by_budget(tokens, PACK_BUDGET):
        out[group] = encoder.embed_packed(*pack([tokens[i] for i in group])).cpu()
    return out


def embed_alone(encoder, tokens: list[list[int]]) -> torch.Tensor:
    return torch.cat([encoder.embed_packed(*pack([t])).cpu() for t in tokens])


def cos_min(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double(), b.double(), dim=-1).min().item()


def report(entry: dict) -> None:
    target = os.environ.get("VIRNUCPRO_GPU_REPORT")
    if not target:
        return
    path = Path(target)
    path = path.with_name(path.stem + ".dnabert" + (path.suffix or ".json"))
    entry = {"model": "dnabert", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
             "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


@pytest.fixture(scope="module", autouse=True)
def roomy_recompile_limit():
    """This module compiles FlexAttention (ALiBi score_mod) and the gated MLP for three dtypes, after the ESM-2 GPU
    tests compiled theirs in the same process: past torch's 8 entries per function Dynamo would quietly fall back to
    eager FlexAttention (a full T x T score matrix). A production run uses one dtype and stays far below."""
    import torch._dynamo.config as dynamo_config

    previous = dynamo_config.recompile_limit
    dynamo_config.recompile_limit = max(previous, 64)
    yield
    dynamo_config.recompile_limit = previous


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    require_cuda()
    return save_tiny_dnabert(tmp_path_factory.mktemp("dnabert") / "dnabert-s-shaped", seed=0, num_layers=12,
                             hidden_size=768, num_heads=12, intermediate_size=3072, vocab_size=4096, std=STD)


@pytest.fixture(scope="module")
def tokens(model_dir) -> list[list[int]]:
    tokenizer = load_dnabert_tokenizer(model_dir)
    g = torch.Generator().manual_seed(11)
    lengths = [20, 21, 150, 151, 301, 500, 1000, 2999, 3000]
    lengths += torch.randint(20, 3001, (40,), generator=g).tolist()
    lengths += torch.randint(100, 160, (40,), generator=g).tolist()  # a block of read-sized ones
    order = torch.randperm(len(lengths), generator=g).tolist()
    return [tokenizer.encode(random_dna(lengths[i], g)) for i in order]


@pytest.fixture(scope="module")
def gold(model_dir, tokens) -> torch.Tensor:
    """fp32, per-sequence SDPA, each sequence alone: the reference every backend and dtype is held to."""
    require_cuda()
    encoder = load_dnabert_encoder(model_dir, device="cuda", dtype=torch.float32, backend="sdpa")
    return embed_alone(encoder, tokens)


def test_cuda_is_available():
    require_cuda()
    assert torch.zeros(1, device="cuda").item() == 0


def combos() -> list[tuple[str, str]]:
    if not torch.cuda.is_available():
        return [("auto", "fp16")]  # collected so the test runs and fails on require_cuda, never skipped
    return [(b, d) for d, dtype in DTYPES.items()
            for b in attention.available_backends(device="cuda", dtype=dtype, alibi=True)]


@pytest.mark.parametrize("backend,dtype", combos())
def test_backend_packed_vs_unpacked_and_vs_fp32(model_dir, tokens, gold, backend, dtype):
    require_cuda()
    encoder = load_dnabert_encoder(model_dir, device="cuda", dtype=DTYPES[dtype], backend=backend)
    start = time.perf_counter()
    packed = embed_packed(encoder, tokens)
    alone = embed_alone(encoder, tokens)
    seconds = time.perf_counter() - start
    assert torch.isfinite(packed).all() and torch.isfinite(alone).all()
    vs_alone, vs_fp32 = cos_min(packed, alone), cos_min(packed, gold)
    centre = gold.mean(0, keepdim=True)
    centred = cos_min(packed - centre, gold - centre)
    report({"test": "packed_vs_unpacked_vs_fp32", "backend": encoder.backend, "dtype": dtype, **encoder.options,
            "num_sequences": len(tokens), "tokens": sum(map(len, tokens)), "std": STD,
            "min_cos_packed_vs_unpacked": vs_alone, "min_cos_vs_fp32_gold": vs_fp32,
            "min_cos_vs_fp32_gold_centred": centred, "seconds": round(seconds, 2)})
    assert vs_alone >= 0.999, f"{backend}/{dtype}: packed vs unpacked min cosine {vs_alone}"
    assert vs_fp32 >= (0.9999 if dtype == "fp32" else 0.99), f"{backend}/{dtype}: vs fp32 min cosine {vs_fp32}"
    assert centred >= (0.9999 if dtype == "fp32" else 0.99), f"{backend}/{dtype}: centred vs fp32 {centred}"


def test_embeddings_are_not_degenerate(gold):
    """The precision checks mean something only if different sequences embed differently."""
    unit = F.normalize(gold.double(), dim=-1)
    pairwise = (unit @ unit.T)[~torch.eye(len(gold), dtype=torch.bool)]
    report({"test": "pairwise_cosine_fp32", "std": STD, "mean": pairwise.mean().item(), "max": pairwise.max().item()})
    assert pairwise.mean() < 0.9, pairwise.mean()


def test_auto_backend_on_cuda_is_not_the_per_sequence_fallback(model_dir, tokens):
    """auto on CUDA: flex with whole compiled layers, and that compile really works here (a failed one would fall
    back to the compiled MLP and leave `compile_fallback` in options)."""
    require_cuda()
    encoder = load_dnabert_encoder(model_dir, device="cuda", dtype=torch.float16)
    embed_packed(encoder, tokens[:20])
    report({"test": "auto_backend", "backend": encoder.backend, "dtype": "fp16", **encoder.options})
    assert encoder.backend in ("flash_attn", "flex"), encoder.backend
    if encoder.backend == "flex":
        assert encoder.options["compile"] == "layer" and "compile_fallback" not in encoder.options, encoder.options


@pytest.mark.parametrize("scope", ["layer", "mlp"])
def test_compiled_matches_eager(model_dir, tokens, gold, scope):
    """torch.compile changes speed, not results: "layer" (whole layers, FlexAttention inside; the CUDA default, so
    the backend combinations above run it) and "mlp" (the gated MLP only) against eager fp16."""
    require_cuda()
    eager = load_dnabert_encoder(model_dir, device="cuda", dtype=torch.float16, compile=False)
    compiled = load_dnabert_encoder(model_dir, device="cuda", dtype=torch.float16, compile=scope)
    assert compiled.options["compile"] == (scope if compiled.backend == "flex" else "mlp")
    a, b = embed_packed(eager, tokens), embed_packed(compiled, tokens)
    vs_eager, vs_fp32 = cos_min(a, b), cos_min(b, gold)
    report({"test": "compiled_vs_eager", "backend": compiled.backend, "dtype": "fp16", **compiled.options,
            "min_cos_compiled_vs_eager": vs_eager, "min_cos_vs_fp32_gold": vs_fp32})
    assert vs_eager >= 0.999 and vs_fp32 >= 0.99, (vs_eager, vs_fp32)


def test_flex_block_64_matches(model_dir, tokens, gold):
    """The 64-token flex block (an option for short reads) gives the same embeddings, compiled."""
    require_cuda()
    encoder = load_dnabert_encoder(model_dir, device="cuda", dtype=torch.float16, backend="flex",
                                   flex_block_size=64)
    out = embed_packed(encoder, tokens)
    vs_fp32 = cos_min(out, gold)
    report({"test": "flex_block_64", "backend": encoder.backend, "dtype": "fp16", **encoder.options,
            "min_cos_vs_fp32_gold": vs_fp32})
    assert vs_fp32 >= 0.99, vs_fp32
