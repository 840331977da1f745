"""DNABERT-S: packed forward vs an independent padded reference, pack isolation, checkpoint layouts and errors.

Every test goes through the real on-disk format (config.json + weights under the published names + tokenizer.json)
written by `save_tiny_dnabert`, and the same loaders a real zhihan1996/DNABERT-S folder goes through.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from virnucpro.errors import ModelError
from virnucpro.models import attention
from virnucpro.models.dnabert import (DNABERTConfig, compile_layers, load_dnabert_encoder, load_dnabert_tokenizer,
                                      save_tiny_dnabert)
from virnucpro.models.encoder import PackedEncoder, SequenceTokenizer
from virnucpro.models.packing import pack_token_ids

# 20..3000 nt, odd sizes included (the frame slices are 3p+1 nt).
LENGTHS = (20, 37, 150, 301, 499, 1000, 1501, 3000)


def random_dna(length: int, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    return "".join("ACGT"[i] for i in torch.randint(0, 4, (length,), generator=g).tolist())


def pack(token_lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    packed = pack_token_ids(token_lists)
    return packed.input_ids, packed.cu_seqlens, packed.max_seqlen


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_dnabert(tmp_path_factory.mktemp("dnabert") / "tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_bare_bin(tmp_path_factory) -> Path:
    # Same seed, the other published layout: bare names + pooler head, pickled pytorch_model.bin.
    return save_tiny_dnabert(tmp_path_factory.mktemp("dnabert") / "bare", seed=0, layout="model",
                             weights_format="bin")


@pytest.fixture(scope="module")
def encoder(tiny):
    return load_dnabert_encoder(tiny)


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return load_dnabert_tokenizer(tiny)


@pytest.fixture(scope="module")
def sequences() -> list[str]:
    return [random_dna(n, seed=n) for n in LENGTHS]


# ------------------------------------------------------------------------------------------ independent reference
def published_slopes(n_heads: int) -> list[float]:
    """ALiBi slopes written out from the ALiBi paper / MosaicBERT `_get_alibi_head_slopes` definition."""
    if n_heads & (n_heads - 1) == 0:
        return [2.0 ** (-8.0 * (i + 1) / n_heads) for i in range(n_heads)]
    low = 1 << (n_heads.bit_length() - 1)
    return published_slopes(low) + published_slopes(2 * low)[0::2][: n_heads - low]


def reference_embed(model_dir: Path, token_lists: list[list[int]]) -> torch.Tensor:
    """A plain padded BERT-with-ALiBi forward in float64 over a [B, L] batch with a key-padding mask, reading the
    checkpoint by its published names; embedding = mean over all real tokens ([CLS]/[SEP] included)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    files = list(model_dir.glob("model.safetensors"))
    raw = load_file(str(files[0])) if files else torch.load(model_dir / "pytorch_model.bin", weights_only=True)
    w = {k.removeprefix("bert."): v.double() for k, v in raw.items()}
    H, eps, inter = cfg["num_attention_heads"], cfg["layer_norm_eps"], cfg["intermediate_size"]
    hidden = cfg["hidden_size"]
    D = hidden // H
    B, L = len(token_lists), max(len(t) for t in token_lists)
    ids = torch.zeros(B, L, dtype=torch.long)
    real = torch.zeros(B, L, dtype=torch.bool)
    for b, t in enumerate(token_lists):
        ids[b, : len(t)] = torch.tensor(t)
        real[b, : len(t)] = True

    def ln(x, name):
        return F.layer_norm(x, (hidden,), w[name + ".weight"], w[name + ".bias"], eps)

    x = ln(w["embeddings.word_embeddings.weight"][ids] + w["embeddings.token_type_embeddings.weight"][0],
           "embeddings.LayerNorm")
    pos = torch.arange(L)
    slopes = torch.tensor(published_slopes(H), dtype=torch.float64)
    bias = -slopes[:, None, None] * (pos[None, :] - pos[:, None]).abs()  # [H, L, L]
    bias = bias[None] + torch.where(real, 0.0, -math.inf)[:, None, None, :].double()  # padded keys never attended
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        qkv = x @ w[p + "attention.self.Wqkv.weight"].T + w[p + "attention.self.Wqkv.bias"]
        q, k, v = qkv.view(B, L, 3, H, D).permute(2, 0, 3, 1, 4)  # each [B, H, L, D]
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + bias, dim=-1)
        ctx = (probs @ v).transpose(1, 2).reshape(B, L, hidden)
        x = ln(ctx @ w[p + "attention.output.dense.weight"].T + w[p + "attention.output.dense.bias"] + x,
               p + "attention.output.LayerNorm")
        h = x @ w[p + "mlp.gated_layers.weight"].T
        act = 0.5 * h[..., :inter] * (1.0 + torch.erf(h[..., :inter] / math.sqrt(2.0)))  # exact GELU
        x = ln((act * h[..., inter:]) @ w[p + "mlp.wo.weight"].T + w[p + "mlp.wo.bias"] + x, p + "mlp.layernorm")
    return (x * real[..., None]).sum(1) / real.sum(1, keepdim=True)


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


# ------------------------------------------------------------------------------------------ semantics
def test_alibi_slopes_are_the_published_ones():
    for heads in (4, 8, 12, 16, 6):
        assert attention.alibi_slopes(heads).tolist() == pytest.approx(published_slopes(heads), rel=1e-7)
    # 12 heads (DNABERT-S): 2^-1..2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    assert attention.alibi_slopes(12).tolist() == pytest.approx(
        [2.0 ** -k for k in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5])
    bias = attention.alibi_bias(attention.alibi_slopes(4), 5, dtype=torch.float32, device=torch.device("cpu"))
    assert torch.equal(bias, bias.transpose(1, 2)) and bias[0, 0, 3] == -0.25 * 3 and bias.max() == 0


def test_packed_matches_padded_reference(tiny, encoder, tokenizer, sequences):
    tokens = [tokenizer.encode(s) for s in sequences]
    got = encoder.embed_packed(*pack(tokens))
    assert got.dtype == torch.float32 and got.shape == (len(sequences), encoder.hidden_size)
    # Padded reference in small batches of mixed lengths, so its padding mask is exercised too.
    want = torch.cat([reference_embed(tiny, tokens[i:i + 3]) for i in range(0, len(tokens), 3)])
    cos = cosines(got, want)
    assert cos.min() >= 0.9999, cos
    assert torch.allclose(got.double(), want, atol=1e-4, rtol=1e-4)


def test_embedding_depends_on_position_and_every_token(encoder, tokenizer):
    """ALiBi is the only position signal: a permuted sequence must embed differently (a model without it would not),
    and the last base must matter (mean over all tokens, no truncation)."""
    seq = random_dna(600, seed=7)
    ids = tokenizer.encode(seq)
    permuted = [ids[0]] + ids[1:-1][::-1] + [ids[-1]]
    last = tokenizer.encode(seq[:-1] + ("A" if seq[-1] != "A" else "C"))
    out = encoder.embed_packed(*pack([ids, permuted, last]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert not torch.allclose(out[0], out[2], atol=1e-6)


# ------------------------------------------------------------------------------------------ PACK-05
def test_pack_isolation_change_add_remove(encoder, tokenizer, sequences):
    tokens = [tokenizer.encode(s) for s in sequences[:6]]
    base = encoder.embed_packed(*pack(tokens))

    changed = list(tokens)
    changed[2] = tokenizer.encode(random_dna(len(sequences[2]), seed=999))
    out = encoder.embed_packed(*pack(changed))
    keep = [i for i in range(6) if i != 2]
    torch.testing.assert_close(out[keep], base[keep], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[2], base[2], atol=1e-3)

    added = tokens[:3] + [tokenizer.encode(random_dna(2500, seed=5))] + tokens[3:]
    out = encoder.embed_packed(*pack(added))
    torch.testing.assert_close(torch.cat([out[:3], out[4:]]), base, rtol=1e-5, atol=1e-6)

    removed = tokens[:1] + tokens[2:]
    out = encoder.embed_packed(*pack(removed))
    torch.testing.assert_close(out, torch.cat([base[:1], base[2:]]), rtol=1e-5, atol=1e-6)

    alone = torch.cat([encoder.embed_packed(*pack([t])) for t in tokens])
    torch.testing.assert_close(alone, base, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_protocol_special_tokens_and_pickle(tiny, tokenizer):
    assert isinstance(tokenizer, SequenceTokenizer) and tokenizer.kind == "dnabert"
    ids = tokenizer.encode("ACGTTGCAACGT")
    assert ids[0] == 1 and ids[-1] == 2  # [CLS] ... [SEP], DNABERT-2's ids
    clone = pickle.loads(pickle.dumps(tokenizer))
    seq = random_dna(3000, seed=3)
    assert clone.encode(seq) == tokenizer.encode(seq)
    assert tokenizer.encode_batch([seq, "ACGT"]) == [tokenizer.encode(seq), tokenizer.encode("ACGT")]


def test_tokenizer_matches_the_reference_call_and_never_truncates(tiny, tmp_path, tokenizer):
    """The reference is `AutoTokenizer(...)(seq)["input_ids"]`: same ids, and no truncation even when the
    tokenizer.json carries a truncation setting (transformers ignores it unless asked)."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "trunc"
    shutil.copytree(tiny, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["truncation"] = {"direction": "Right", "max_length": 16, "strategy": "LongestFirst", "stride": 0}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    ours = load_dnabert_tokenizer(folder)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny / "tokenizer.json"))
    for seq in (random_dna(20, 1), random_dna(3000, 2), "ACGTNNACGT"):
        assert ours.encode(seq) == hf(seq)["input_ids"] == tokenizer.encode(seq)
        assert len(ours.encode(seq)) > 16 or len(seq) < 40


def test_no_truncation_and_a_sane_engine_budget(tokenizer, encoder):
    """max_tokens is where the engine's outlier rule starts (a sequence runs alone), never a truncation; and the
    engine never sizes its budget below it, so it must stay modest."""
    from virnucpro.engine.batching import CPU_BUDGET, MAX_BUDGET, ModelShape, plan_packs, token_budget

    long = random_dna(40_000, seed=9)
    ids = tokenizer.encode(long)
    assert len(ids) > tokenizer.max_tokens and ids[0] == 1 and ids[-1] == 2
    budget, _ = token_budget(ModelShape.of(encoder), torch.device("cpu"), max_tokens=tokenizer.max_tokens)
    assert budget <= max(CPU_BUDGET, MAX_BUDGET)
    gpu_budget, _ = token_budget(ModelShape.of(encoder), torch.device("cuda"), max_tokens=tokenizer.max_tokens,
                                 free_bytes=80 << 30)
    assert tokenizer.max_tokens <= gpu_budget <= MAX_BUDGET
    import numpy as np

    bounds = plan_packs(np.array([50, 60, len(ids), 70]), budget, tokenizer.max_tokens)
    assert bounds.tolist() == [0, 2, 3, 4]  # the long one alone


def test_tokenizer_vocab_must_match_model(tiny, tmp_path):
    folder = tmp_path / "vocab"
    shutil.copytree(tiny, folder)
    save_tiny_dnabert(tmp_path / "other", seed=0, vocab_size=64)
    shutil.copy(tmp_path / "other" / "tokenizer.json", folder / "tokenizer.json")
    with pytest.raises(ModelError, match=r"tokenizer\.json: tokenizer vocabulary has \d+ tokens but config\.json "
                                         r"vocab_size is \d+"):
        load_dnabert_tokenizer(folder)


def test_tokenizer_may_be_smaller_than_a_padded_embedding_table(tiny, tmp_path):
    folder = tmp_path / "padded"
    shutil.copytree(tiny, folder)
    config = json.loads((folder / "config.json").read_text())
    size = config["vocab_size"]
    for padded, ok in ((size + 8, True), (size + 64, False), (size - 1, False)):
        config["vocab_size"] = padded
        (folder / "config.json").write_text(json.dumps(config))
        if ok:
            assert load_dnabert_tokenizer(folder).vocab_size == size
        else:
            with pytest.raises(ModelError, match="do not belong together"):
                load_dnabert_tokenizer(folder)


# ------------------------------------------------------------------------------------------ checkpoints
def test_both_key_layouts_load_identically(tiny, tiny_bare_bin, encoder, tokenizer, sequences):
    keys = load_file(str(tiny / "model.safetensors")).keys()
    assert any(k.startswith("cls.") for k in keys) and all(k.startswith(("bert.", "cls.")) for k in keys)
    bare = torch.load(tiny_bare_bin / "pytorch_model.bin", weights_only=True)
    assert any(k.startswith("pooler.") for k in bare) and not any(k.startswith("bert.") for k in bare)
    other = load_dnabert_encoder(tiny_bare_bin)
    assert isinstance(other, PackedEncoder)
    assert other.fingerprint == encoder.fingerprint
    assert (other.kind, other.hidden_size, other.num_layers, other.num_heads, other.intermediate_size) == (
        "dnabert", 32, 2, 4, 64)
    batch = pack([tokenizer.encode(s) for s in sequences[:4]])
    assert torch.equal(other.embed_packed(*batch), encoder.embed_packed(*batch))


def test_fingerprint_changes_with_any_weight(tiny, tmp_path, encoder):
    folder = tmp_path / "changed"
    shutil.copytree(tiny, folder)
    state = load_file(str(folder / "model.safetensors"))
    state["bert.encoder.layer.1.mlp.layernorm.bias"][0] += 1e-3
    save_file(state, str(folder / "model.safetensors"))
    assert load_dnabert_encoder(folder).fingerprint != encoder.fingerprint
    # Heads are not part of the model we run: changing them keeps the fingerprint.
    state = load_file(str(tiny / "model.safetensors"))
    state["cls.predictions.decoder.bias"] += 1.0
    save_file(state, str(folder / "model.safetensors"))
    assert load_dnabert_encoder(folder).fingerprint == encoder.fingerprint


def edited_copy(tiny: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(tiny, folder)
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))
    return folder


def test_missing_tensor_names_file_and_tensor(tiny, tmp_path):
    folder = edited_copy(tiny, tmp_path, lambda s: s.pop("bert.encoder.layer.1.attention.self.Wqkv.bias"))
    with pytest.raises(ModelError, match=r"edited/model\.safetensors: missing tensor "
                                         r"bert\.encoder\.layer\.1\.attention\.self\.Wqkv\.bias"):
        load_dnabert_encoder(folder)


def test_wrong_shape_names_tensor_and_both_shapes(tiny, tmp_path):
    def edit(state):
        state["bert.encoder.layer.0.mlp.gated_layers.weight"] = torch.zeros(64, 32)

    folder = edited_copy(tiny, tmp_path, edit)
    with pytest.raises(ModelError, match=r"model\.safetensors: tensor bert\.encoder\.layer\.0\.mlp\.gated_layers"
                                         r"\.weight has shape \[64, 32\], expected \[128, 32\]"):
        load_dnabert_encoder(folder)


def test_unexpected_tensor_is_refused(tiny, tmp_path):
    def edit(state):
        state["bert.encoder.layer.2.mlp.wo.bias"] = torch.zeros(32)

    with pytest.raises(ModelError, match=r"unexpected tensor bert\.encoder\.layer\.2\.mlp\.wo\.bias"):
        load_dnabert_encoder(edited_copy(tiny, tmp_path, edit))


def test_esm_folder_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.EsmConfig(vocab_size=33, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, pad_token_id=1, mask_token_id=32)
    transformers.EsmModel(config).save_pretrained(tmp_path / "esm")
    with pytest.raises(ModelError, match=r"not a DNABERT-S .*model_type esm"):
        load_dnabert_encoder(tmp_path / "esm")
    with pytest.raises(ModelError, match=r"not a DNABERT-S"):
        load_dnabert_tokenizer(tmp_path / "esm")


def test_standard_bert_folder_is_named(tmp_path):
    """A plain Hugging Face BERT (separate query/key/value, position embeddings) has model_type 'bert' too."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match=r"missing tensor .*Wqkv.* standard BERT checkpoint, not DNABERT-S"):
        load_dnabert_encoder(tmp_path / "bert")


def test_folder_without_weights_or_config(tmp_path, tiny):
    with pytest.raises(ModelError, match="no config.json"):
        load_dnabert_encoder(tmp_path)
    folder = tmp_path / "noweights"
    shutil.copytree(tiny, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no model.safetensors or pytorch_model.bin"):
        load_dnabert_encoder(folder)


def test_config_parsing_matches_the_published_dnabert_s_config(tiny):
    cfg = DNABERTConfig.from_json(tiny / "config.json")
    assert (cfg.layer_norm_eps, cfg.type_vocab_size, cfg.head_dim) == (1e-12, 2, 8)
    assert DNABERTConfig() == DNABERTConfig(vocab_size=4096, hidden_size=768, num_hidden_layers=12,
                                            num_attention_heads=12, intermediate_size=3072)


def test_save_tiny_is_fast_and_deterministic(tmp_path):
    start = time.perf_counter()
    a = save_tiny_dnabert(tmp_path / "a", seed=3)
    assert time.perf_counter() - start < 2.0
    b = save_tiny_dnabert(tmp_path / "b", seed=3)
    c = save_tiny_dnabert(tmp_path / "c", seed=4)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------------ precision, backends
def test_bf16_on_cpu_stays_close_to_fp32(tiny, encoder, tokenizer, sequences):
    low = load_dnabert_encoder(tiny, dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16 and low.fingerprint == encoder.fingerprint
    batch = pack([tokenizer.encode(s) for s in sequences])
    out = low.embed_packed(*batch)
    assert out.dtype == torch.float32
    assert cosines(out, encoder.embed_packed(*batch)).min() >= 0.99


OTHER_BACKENDS = [b for b in attention.available_backends(device="cpu", dtype=torch.float32, alibi=True)
                  if b != "sdpa"]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", OTHER_BACKENDS or [pytest.param("none", marks=pytest.mark.skip(
    reason="attention.py offers no CPU backend with ALiBi besides sdpa"))])
def test_other_backends_match_sdpa_on_cpu(tiny, encoder, tokenizer, sequences, backend):
    """FlexAttention (document block mask + ALiBi score_mod, eager on CPU) against per-sequence SDPA."""
    other = load_dnabert_encoder(tiny, backend=backend)
    assert other.backend == backend
    # Long and short sequences together so packs span several 128-token flex blocks and share blocks.
    batch = pack([tokenizer.encode(s) for s in sequences])
    torch.testing.assert_close(other.embed_packed(*batch), encoder.embed_packed(*batch), rtol=1e-4, atol=1e-5)
    assert cosines(other.embed_packed(*batch), encoder.embed_packed(*batch)).min() >= 0.9999


def test_backend_that_cannot_do_alibi_here_is_refused_at_load(tiny):
    with pytest.raises(ModelError, match=r"attention backend 'torch_varlen' unusable here"):
        load_dnabert_encoder(tiny, backend="torch_varlen")
    assert load_dnabert_encoder(tiny).backend == "sdpa"  # auto on CPU


# DNABERT-S-shaped random weights for precision checks (the GPU test uses the same): std 0.03, 1.5x the published
# initializer_range 0.02. At 0.05 the 12-layer post-LN stack is chaotic (measured on CPU: one 2^-9 relative
# perturbation of the fp32 input embeddings alone moves the fp32 output to cosine 0.994, and bf16's deviation from
# fp32 doubles layer after layer to ~0.9; keeping residuals, LayerNorms, attention and GELU in fp32 does not help),
# so it tests the random weights, not the code. At 0.02 the embeddings are nearly collinear (pairwise cosine ~0.95),
# which flatters a raw cosine. 0.03 is ordered and still gives distinct embeddings (pairwise cosine ~0.6).
SHAPED_STD = 0.03


@pytest.fixture(scope="module")
def shaped(tmp_path_factory) -> Path:
    return save_tiny_dnabert(tmp_path_factory.mktemp("dnabert") / "shaped", seed=0, num_layers=12, hidden_size=768,
                             num_heads=12, intermediate_size=3072, vocab_size=4096, std=SHAPED_STD)


def test_bf16_dnabert_s_shaped_stays_close_to_fp32(shaped):
    """PREC-02 on the real shape (12 x 768, 12 heads): bf16 vs fp32 cosine >= 0.99 per sequence, raw and after
    removing the mean embedding of the batch (the part every sequence shares would otherwise flatter the cosine),
    while different sequences stay clearly different (the embeddings are not degenerate)."""
    tokenizer = load_dnabert_tokenizer(shaped)
    tokens = [tokenizer.encode(random_dna(n, seed=n)) for n in (20, 60, 150, 151, 301)]
    batch = pack(tokens)
    gold = load_dnabert_encoder(shaped).embed_packed(*batch)
    low = load_dnabert_encoder(shaped, dtype=torch.bfloat16).embed_packed(*batch)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert cosines(low, gold).min() >= 0.99
    centre = gold.mean(0, keepdim=True)
    assert cosines(low - centre, gold - centre).min() >= 0.99
    unit = F.normalize(gold.double(), dim=-1)
    pairwise = (unit @ unit.T)[~torch.eye(len(tokens), dtype=torch.bool)]
    assert pairwise.max() < 0.95, pairwise  # distinct sequences, distinct embeddings


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("block", [128, 64])
def test_whole_layer_compiles_into_one_graph_with_flex_and_matches_sdpa(tiny, encoder, tokenizer, sequences, block):
    """compile="layer" (the CUDA default) traces each layer, FlexAttention included, as one graph: fullgraph=True
    fails on any graph break. aot_eager runs the traced graph without Inductor, so this checks the tracing and the
    graph's numbers on CPU; the GPU test checks Inductor's kernels. Packs of 1, several and many flex blocks, never a
    whole number of blocks (the stream is padded with a document of its own), all through one compiled graph."""
    from torch._dynamo.utils import counters

    flex = load_dnabert_encoder(tiny, backend="flex", compile=False, flex_block_size=block)
    compile_layers(flex.model, "layer", backend="aot_eager", fullgraph=True)
    graphs = counters["stats"]["unique_graphs"]
    for group in (sequences, sequences[:3], sequences[:1], [sequences[0]] * 9):
        batch = pack([tokenizer.encode(s) for s in group])
        assert batch[0].numel() % 128
        torch.testing.assert_close(flex.embed_packed(*batch), encoder.embed_packed(*batch), rtol=1e-4, atol=1e-5)
    # One graph for every pack size, a single 20-nt sequence included: no recompile per pack.
    assert counters["stats"]["unique_graphs"] - graphs == 1


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_block_size_does_not_change_embeddings(tiny, encoder, tokenizer, sequences):
    """A 64-token flex block (the short-read option) gives the same embeddings; a block that is not a power of two
    is refused at load."""
    flex64 = load_dnabert_encoder(tiny, backend="flex", flex_block_size=64)
    assert flex64.options["flex_block_size"] == 64 and flex64.options["compile"] is None
    batch = pack([tokenizer.encode(s) for s in sequences])
    torch.testing.assert_close(flex64.embed_packed(*batch), encoder.embed_packed(*batch), rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelError, match="flex block size 100"):
        load_dnabert_encoder(tiny, backend="flex", flex_block_size=100)
    with pytest.raises(ModelError, match="compile scope 'everything'"):
        load_dnabert_encoder(tiny, compile="everything")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_failed_whole_layer_compile_falls_back_to_the_compiled_mlp(tiny, encoder, tokenizer, sequences, caplog):
    """If a machine's compiler cannot build the whole layer (FlexAttention inside), embedding goes on with the
    compiled MLP, says so in the log and in `options` (which the GPU tests and the bench report), same numbers."""
    def no_flex(gm, example_inputs):  # a compiler backend that cannot lower FlexAttention, fine with the rest
        if any("flex_attention" in str(node.target) for node in gm.graph.nodes):
            raise RuntimeError("this backend cannot lower FlexAttention")
        return gm.forward

    flex = load_dnabert_encoder(tiny, backend="flex", compile=False)
    flex.compile("layer", backend=no_flex)
    assert flex.options["compile"] == "layer"
    batch = pack([tokenizer.encode(s) for s in sequences[:4]])
    out = flex.embed_packed(*batch)
    assert flex.options["compile"] == "mlp" and "cannot lower FlexAttention" in flex.options["compile_fallback"]
    assert "whole-layer compile failed" in caplog.text
    torch.testing.assert_close(out, encoder.embed_packed(*batch), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(flex.embed_packed(*batch), out)
