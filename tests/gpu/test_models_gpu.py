"""ESM-2 on a GPU: every available attention backend x fp32/fp16/bf16, packed vs unpacked [PACK-04], low precision
vs fp32 [PREC-02, PACK-04b], backends against each other, and our fp32 forward against Hugging Face EsmModel on the
same device. (DNABERT-S has the same checks in tests/gpu/test_dnabert_gpu.py.)

Run on the GPU machine:  VIRNUCPRO_GPU_REPORT=bench/results/gpu-esm2.json pytest -m gpu tests/gpu/test_models_gpu.py -v
Without CUDA these tests FAIL, never skip. With VIRNUCPRO_GPU_REPORT set, the per-check cosine minima are written
there as one JSON object (rewritten after every test, so an interrupted run still leaves what it measured).

Models: random weights in the real HF folder format, loaded through the registry like a real checkpoint:
"t12"  = esm2_t12_35M-shaped (12 layers, hidden 480, 20 heads: head_dim 24),
"3B-2L" = esm2_t36_3B-shaped layers (hidden 2560, 40 heads, FFN 10240: head_dim 64) with 2 layers instead of 36.
Proteins of 10..1022 aa plus a 1100-aa outlier (truncated to 1024 by the tokenizer, as the reference does).
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
from virnucpro.models.esm2 import ESM2, PRESETS, ESM2Config, init_random_, save_hf_folder
from virnucpro.models.packing import pack_token_ids, plan_packs
from virnucpro.models.registry import load_encoder, load_tokenizer

pytestmark = pytest.mark.gpu

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PACK_BUDGET = 16384
t36 = PRESETS["esm2_t36_3B"]
CONFIGS = {
    "t12": (PRESETS["esm2_t12_35M"], ("fp32", "fp16", "bf16")),
    "3B-2L": (ESM2Config(num_layers=2, hidden_size=t36.hidden_size, num_heads=t36.num_heads,
                         intermediate_size=t36.intermediate_size), ("fp16", "bf16")),
}
RESULTS: dict[str, dict] = {}


def require_cuda() -> torch.device:
    assert torch.cuda.is_available(), "GPU test run without a usable CUDA device (torch.cuda.is_available() is False)"
    return torch.device("cuda")


def record(key: str, **values) -> None:
    RESULTS[key] = values
    target = os.environ.get("VIRNUCPRO_GPU_REPORT")
    if not target:
        return
    meta = {"model": "esm2", "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "flash_attn": attention.has_flash_attn(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text(json.dumps({**meta, "checks": RESULTS}, indent=2) + "\n")


def cos_min(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double(), b.double(), dim=-1).min().item()


def embed_packed(encoder, tokens: list[list[int]]) -> torch.Tensor:
    out = torch.empty(len(tokens), encoder.hidden_size)
    for group in plan_packs([len(t) for t in tokens], PACK_BUDGET):
        p = pack_token_ids([tokens[i] for i in group]).to("cuda")
        out[group] = encoder.embed_packed(p.input_ids, p.cu_seqlens, p.max_seqlen).cpu()
    return out


def embed_alone(encoder, tokens: list[list[int]]) -> torch.Tensor:
    rows = []
    for t in tokens:
        p = pack_token_ids([t]).to("cuda")
        rows.append(encoder.embed_packed(p.input_ids, p.cu_seqlens, p.max_seqlen).cpu())
    return torch.cat(rows)


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request, tmp_path_factory):
    require_cuda()
    name = request.param
    cfg, dtypes = CONFIGS[name]
    folder = save_hf_folder(init_random_(ESM2(cfg), seed=0), tmp_path_factory.mktemp("esm2") / name)
    tokenizer = load_tokenizer("esm2", folder)
    g = torch.Generator().manual_seed(5)
    lengths = [10, 11, 100, 127, 128, 129, 500, 1021, 1022, 1100]
    lengths += torch.randint(10, 1023, (30,), generator=g).tolist()
    lengths += torch.randint(50, 100, (30,), generator=g).tolist()  # a block of short frames (150-300 nt reads)
    amino = "LAGVSERTIDPKQNFYMHWC"
    seqs = ["".join(amino[i] for i in torch.randint(0, 20, (n,), generator=g).tolist()) for n in lengths]
    order = torch.randperm(len(seqs), generator=g).tolist()
    seqs = [seqs[i] for i in order]
    tokens = [tokenizer.encode(s) for s in seqs]
    gold = embed_alone(load_encoder("esm2", folder, device="cuda", dtype=torch.float32, backend="sdpa"), tokens)
    return {"name": name, "folder": folder, "dtypes": dtypes, "seqs": seqs, "tokens": tokens, "gold": gold}


def test_cuda_is_available():
    require_cuda()
    assert torch.zeros(1, device="cuda").item() == 0


def test_fp32_matches_huggingface_on_gpu(model):
    """Our per-sequence fp32 gold against HF EsmModel (sdpa, padded batches) on the same GPU and weights."""
    from transformers import EsmModel

    hf = EsmModel.from_pretrained(model["folder"], add_pooling_layer=False, attn_implementation="sdpa")
    hf = hf.to("cuda", torch.float32).eval()
    rows = []
    with torch.inference_mode():
        for i in range(0, len(model["tokens"]), 8):
            batch = model["tokens"][i:i + 8]
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), 1, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for j, t in enumerate(batch):
                ids[j, :len(t)] = torch.tensor(t)
                mask[j, :len(t)] = 1
            hidden = hf(input_ids=ids.cuda(), attention_mask=mask.cuda()).last_hidden_state.float().cpu()
            rows += [hidden[j, 1:len(t) - 1].mean(0) for j, t in enumerate(batch)]
    c = cos_min(torch.stack(rows), model["gold"])
    record(f"{model['name']}/fp32/sdpa/vs_hf_esmmodel", min_cos=c)
    assert c >= 0.9999, c


def combos() -> list[tuple[str, str]]:
    if not torch.cuda.is_available():
        return [("auto", "fp16")]  # collected so the test runs and fails on require_cuda, never skipped
    return [(b, d) for d in DTYPES for b in attention.available_backends(device="cuda", dtype=DTYPES[d], alibi=False)]


@pytest.mark.parametrize("backend,dtype", combos())
def test_backend_packed_vs_unpacked_and_vs_fp32(model, backend, dtype):
    require_cuda()
    if dtype not in model["dtypes"]:
        pytest.skip(f"{model['name']} is checked in {', '.join(model['dtypes'])} only (time budget)")
    encoder = load_encoder("esm2", model["folder"], device="cuda", dtype=DTYPES[dtype], backend=backend)
    assert encoder.backend == backend
    start = time.perf_counter()
    packed = embed_packed(encoder, model["tokens"])
    alone = embed_alone(encoder, model["tokens"])
    seconds = time.perf_counter() - start
    assert torch.isfinite(packed).all() and torch.isfinite(alone).all()
    vs_alone, vs_fp32 = cos_min(packed, alone), cos_min(packed, model["gold"])
    model.setdefault("by_backend", {})[(backend, dtype)] = packed
    record(f"{model['name']}/{dtype}/{backend}", min_cos_packed_vs_unpacked=vs_alone, min_cos_vs_fp32_gold=vs_fp32,
           sequences=len(model["tokens"]), tokens=sum(map(len, model["tokens"])), seconds=round(seconds, 2))
    assert vs_alone >= 0.999, f"{backend}/{dtype}: packed vs unpacked min cosine {vs_alone}"
    assert vs_fp32 >= (0.9999 if dtype == "fp32" else 0.99), f"{backend}/{dtype}: vs fp32 min cosine {vs_fp32}"


def test_backends_agree_with_each_other(model):
    require_cuda()
    results = model.get("by_backend", {})
    assert results, "no backend results (the per-backend test must run first in this module)"
    for dtype in model["dtypes"]:
        names = [b for (b, d) in results if d == dtype]
        for other in names[1:]:
            c = cos_min(results[(names[0], dtype)], results[(other, dtype)])
            record(f"{model['name']}/{dtype}/{names[0]}_vs_{other}", min_cos=c)
            assert c >= (0.9999 if dtype == "fp32" else 0.995), f"{dtype}: {names[0]} vs {other}: {c}"


def test_auto_backend_choice_on_cuda(model):
    require_cuda()
    fp16 = load_encoder("esm2", model["folder"], device="cuda", dtype=torch.float16).backend
    fp32 = load_encoder("esm2", model["folder"], device="cuda", dtype=torch.float32).backend
    record(f"{model['name']}/auto", fp16=fp16, fp32=fp32)
    assert fp16 == ("flash_attn" if attention.has_flash_attn() else "torch_varlen" if attention.has_torch_varlen()
                    else "flex")
    assert fp32 == "flex"


def test_compiled_blocks_on_cuda(model):
    """The opt-in VIRNUCPRO_COMPILE_BLOCKS path: same numbers as the eager blocks."""
    require_cuda()
    from virnucpro.models.esm2 import ESM2Encoder, build_esm2, load_esm2_checkpoint

    backend = "flash_attn" if attention.has_flash_attn() else "torch_varlen"
    cfg, state, _, _ = load_esm2_checkpoint(model["folder"])
    encoder = ESM2Encoder(build_esm2(cfg, state, device="cuda", dtype=torch.float16), backend=backend,
                          compile_blocks=True)
    packed = embed_packed(encoder, model["tokens"])
    c = cos_min(packed, model["gold"])
    record(f"{model['name']}/fp16/{backend}+compiled_blocks", min_cos_vs_fp32_gold=c)
    assert c >= 0.99, c
