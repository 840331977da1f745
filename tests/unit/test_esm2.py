"""Packed ESM-2 against the Hugging Face EsmModel (the reference), fair-esm checkpoints, packing isolation
[PACK-05], the 1024-residue truncation rule and loader errors; tiny random models saved in the real formats."""

from __future__ import annotations

import argparse
import json
import pickle
import random
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from virnucpro.errors import ModelError
from virnucpro.models.esm2 import (ESM2, ESM2Config, ESM_VOCAB, PRESETS, build_esm2, init_random_,
                                   load_esm2_checkpoint, save_tiny_esm2)
from virnucpro.models.packing import pack_token_ids
from virnucpro.models.registry import load_encoder, load_tokenizer

AMINO = "LAGVSERTIDPKQNFYMHWC"


def random_protein(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(AMINO) for _ in range(n))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-esm2")
    hf, fair = save_tiny_esm2(root, seed=3)
    return hf, fair


@pytest.fixture(scope="module")
def proteins():
    rng = random.Random(7)
    seqs = [random_protein(rng, n) for n in (1, 2, 9, 30, 64, 127, 128, 200)]
    seqs.append("MKX*BZUO.-qj")  # rare, gap, lowercase and stop characters: <unk> or their own tokens
    return seqs


def embed(encoder, tokenizer, seqs: list[str]) -> torch.Tensor:
    pack = pack_token_ids([tokenizer.encode(s) for s in seqs])
    return encoder.embed_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen)


def hf_reference(folder, tokenizer, seqs: list[str]) -> torch.Tensor:
    """VirNucPro's extract_esm pooling on HF EsmModel: mean of last_hidden_state[1 : len + 1] per sequence."""
    from transformers import EsmModel

    model = EsmModel.from_pretrained(folder, add_pooling_layer=False).eval()
    rows = []
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([tokenizer.encode(s)])
            hidden = model(input_ids=ids).last_hidden_state[0]
            rows.append(hidden[1: ids.shape[1] - 1].mean(0))
    return torch.stack(rows)


def assert_cosine(a: torch.Tensor, b: torch.Tensor, minimum: float) -> None:
    cos = F.cosine_similarity(a.double(), b.double(), dim=-1)
    assert cos.min().item() >= minimum, cos


def test_tokenizer_vocabulary_and_unknowns(tiny):
    tok = load_tokenizer("esm2", tiny[0])
    assert tok.vocab == ESM_VOCAB and len(tok.vocab) == 33
    assert tok.encode("LAC") == [0, 4, 5, 23, 2]
    assert tok.encode("J*a") == [0, 3, 3, 3, 2]  # unknown residues -> <unk>
    assert tok.max_tokens == 1026
    clone = pickle.loads(pickle.dumps(tok))  # crosses into spawned DataLoader workers
    assert clone.encode("MKV*") == tok.encode("MKV*")


def test_tokenizer_reads_vocab_txt(tmp_path, tiny):
    folder = tmp_path / "esm2"
    shutil.copytree(tiny[0], folder)
    vocab = list(ESM_VOCAB)
    vocab[4], vocab[5] = vocab[5], vocab[4]  # swap L and A: ids must follow the file, not our constant
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    assert load_tokenizer("esm2", folder).encode("LA") == [0, 5, 4, 2]


def test_packed_matches_huggingface_esmmodel(tiny, proteins):
    hf, _ = tiny
    tok = load_tokenizer("esm2", hf)
    ours = embed(load_encoder("esm2", hf), tok, proteins)
    ref = hf_reference(hf, tok, proteins)
    assert_cosine(ours, ref, 0.9999)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_fair_checkpoint_matches_hf_folder(tiny, proteins):
    hf, fair = tiny
    tok = load_tokenizer("esm2", hf)
    a = embed(load_encoder("esm2", hf), tok, proteins)
    b = embed(load_encoder("esm2", fair), load_tokenizer("esm2", fair), proteins)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    # A folder holding exactly one .pt is accepted too.
    b2 = embed(load_encoder("esm2", fair.parent), tok, proteins)
    torch.testing.assert_close(a, b2, atol=0, rtol=0)


def test_fair_checkpoint_matches_fair_esm_reference(tiny, proteins):
    """fair-esm itself (test-only dependency) reading our .pt gives the same embeddings as our loader."""
    esm = pytest.importorskip("esm")
    _, fair = tiny
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(fair, map_location="cpu", weights_only=True)
    model, alphabet, state = esm.pretrained._load_model_and_alphabet_core_v2(data)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("contact_head") for k in missing)
    model.eval()
    converter = alphabet.get_batch_converter(truncation_seq_length=1024)
    clean = [s for s in proteins if s.isupper() and s.isalpha()]  # fair-esm's tokenizer, our alphabet
    _, _, tokens = converter([(str(i), s) for i, s in enumerate(clean)])
    with torch.no_grad():
        reps = model(tokens, repr_layers=[model.num_layers])["representations"][model.num_layers]
    ref = torch.stack([reps[i, 1: len(s) + 1].mean(0) for i, s in enumerate(clean)])
    ours = embed(load_encoder("esm2", fair), load_tokenizer("esm2", fair), clean)
    assert_cosine(ours, ref, 0.9999)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_pytorch_model_bin_folder(tmp_path, tiny, proteins):
    hf, _ = tiny
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(hf / "config.json", folder)
    torch.save(load_file(hf / "model.safetensors"), folder / "pytorch_model.bin")
    tok = load_tokenizer("esm2", hf)
    torch.testing.assert_close(embed(load_encoder("esm2", folder), tok, proteins),
                               embed(load_encoder("esm2", hf), tok, proteins), atol=0, rtol=0)


def test_bare_esmmodel_layout_without_prefix(tmp_path, tiny, proteins):
    """`EsmModel.save_pretrained` writes keys without `esm.` and without lm_head: accepted too."""
    from transformers import EsmModel

    hf, _ = tiny
    out = tmp_path / "bare"
    EsmModel.from_pretrained(hf, add_pooling_layer=False).save_pretrained(out)
    assert not any(k.startswith("esm.") for k in load_file(out / "model.safetensors"))
    tok = load_tokenizer("esm2", hf)
    torch.testing.assert_close(embed(load_encoder("esm2", out), tok, proteins),
                               embed(load_encoder("esm2", hf), tok, proteins), atol=1e-6, rtol=1e-6)


def test_pack_isolation_PACK05(tiny):
    """Changing, adding or removing one sequence leaves every other sequence's embedding unchanged."""
    hf, _ = tiny
    enc, tok = load_encoder("esm2", hf), load_tokenizer("esm2", hf)
    rng = random.Random(11)
    seqs = [random_protein(rng, n) for n in (5, 40, 17, 90, 3, 60)]
    base = embed(enc, tok, seqs)
    changed = seqs.copy()
    changed[2] = random_protein(rng, 17)
    out = embed(enc, tok, changed)
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(out[keep], base[keep], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[2], base[2], atol=1e-3)
    added = embed(enc, tok, seqs[:3] + [random_protein(rng, 70)] + seqs[3:])
    torch.testing.assert_close(added[[0, 1, 2, 4, 5, 6]], base, atol=1e-5, rtol=1e-5)
    removed = embed(enc, tok, seqs[:1] + seqs[2:])
    torch.testing.assert_close(removed, base[[0, 2, 3, 4, 5]], atol=1e-5, rtol=1e-5)
    alone = torch.cat([embed(enc, tok, [s]) for s in seqs])
    torch.testing.assert_close(alone, base, atol=1e-5, rtol=1e-5)


def test_truncation_to_1024_residues(tiny):
    hf, _ = tiny
    enc, tok = load_encoder("esm2", hf), load_tokenizer("esm2", hf)
    rng = random.Random(5)
    long = random_protein(rng, 1100)
    ids = tok.encode(long)
    assert len(ids) == 1026 == tok.max_tokens and ids[-1] == 2 and ids[0] == 0
    got = embed(enc, tok, [long, "MKV"])
    want = embed(enc, tok, [long[:1024], "MKV"])
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    # and the reference way: HF on the truncated input, mean over positions 1..1024
    assert_cosine(got[:1], hf_reference(hf, tok, [long[:1024]]), 0.9999)
    assert not torch.allclose(got[0], embed(enc, tok, [long[:1000]])[0], atol=1e-4)


def test_presets_shapes():
    big = PRESETS["esm2_t36_3B"]
    assert (big.num_layers, big.hidden_size, big.num_heads, big.intermediate_size) == (36, 2560, 40, 10240)
    assert ESM2Config.from_name("facebook/esm2_t33_650M_UR50D") == PRESETS["esm2_t33_650M"]
    with torch.device("meta"):
        n = sum(p.numel() for p in ESM2(big).parameters())
    assert 2.8e9 < n < 2.9e9  # the published 3B model has 2.84B parameters (without its LM head)
    with pytest.raises(ModelError, match="unknown ESM-2 preset"):
        ESM2Config.from_name("esm2_t99")


def test_arbitrary_tiny_config_roundtrip(tmp_path):
    from virnucpro.models.esm2 import save_hf_folder

    cfg = ESM2Config(num_layers=3, hidden_size=48, num_heads=6, intermediate_size=96)
    model = init_random_(ESM2(cfg), seed=1)
    save_hf_folder(model, tmp_path / "m")
    loaded_cfg, state, _, layout = load_esm2_checkpoint(tmp_path / "m")
    assert loaded_cfg == cfg and layout == "hf"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------ errors

def _copy(tmp_path, folder):
    dst = tmp_path / "bad"
    shutil.copytree(folder, dst)
    return dst


def test_missing_tensor_is_named(tmp_path, tiny):
    bad = _copy(tmp_path, tiny[0])
    tensors = load_file(bad / "model.safetensors")
    del tensors["esm.encoder.layer.1.attention.self.key.weight"]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(ModelError, match=r"model\.safetensors.*missing tensor "
                                         r"'encoder\.layer\.1\.attention\.self\.key\.weight' \(expected shape \[64, 64\]\)"):
        load_encoder("esm2", bad)


def test_misshaped_tensor_is_named(tmp_path, tiny):
    bad = _copy(tmp_path, tiny[0])
    tensors = load_file(bad / "model.safetensors")
    tensors["esm.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(128, 64)
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(ModelError, match=r"model\.safetensors: tensor 'encoder\.layer\.0\.intermediate\.dense\.weight' "
                                         r"has shape \[128, 64\], expected \[256, 64\]"):
        load_encoder("esm2", bad)


def test_config_weights_disagree(tmp_path, tiny):
    bad = _copy(tmp_path, tiny[0])
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"unexpected tensor 'encoder\.layer\.1\..*config and weights disagree"):
        load_encoder("esm2", bad)


def test_missing_weights_file(tmp_path, tiny):
    bad = _copy(tmp_path, tiny[0])
    (bad / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no model.safetensors or pytorch_model.bin"):
        load_encoder("esm2", bad)


def test_fair_checkpoint_missing_tensor(tmp_path, tiny):
    _, fair = tiny
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(fair, weights_only=True)
    del data["model"]["encoder.sentence_encoder.layers.0.fc2.bias"]
    torch.save(data, tmp_path / "broken.pt")
    with pytest.raises(ModelError, match=r"broken\.pt: missing tensor 'layers\.0\.fc2\.bias' \(expected shape \[64\]\)"):
        load_encoder("esm2", tmp_path / "broken.pt")


def test_wrong_model_kind(tmp_path, tiny):
    from virnucpro.models.dnabert import save_tiny_dnabert

    dnabert = tmp_path / "dnabert"
    save_tiny_dnabert(dnabert, seed=0)
    with pytest.raises(ModelError, match=r"model_type is 'bert'.*it belongs to --model-kind dnabert / --dnabert-model"):
        load_encoder("esm2", dnabert)
    with pytest.raises(ModelError, match=r"model_type is 'bert'.*it belongs to --model-kind dnabert / --dnabert-model"):
        load_tokenizer("esm2", dnabert)
    with pytest.raises(ModelError, match=r"ESM-2 folder, not DNABERT-S.*it belongs to --model-kind esm2 / --esm-model"):
        load_encoder("dnabert", tiny[0])
    with pytest.raises(ModelError, match=r"it belongs to --model-kind esm2 / --esm-model"):
        load_tokenizer("dnabert", tiny[1])
    with pytest.raises(ModelError, match="does not exist"):
        load_encoder("esm2", tmp_path / "nowhere")
    with pytest.raises(ModelError, match="unknown model kind"):
        load_encoder("esm3", tiny[0])


def test_esm1b_config_refused(tmp_path, tiny):
    bad = _copy(tmp_path, tiny[0])
    cfg = json.loads((bad / "config.json").read_text())
    cfg["position_embedding_type"] = "absolute"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="only ESM-2 \\(rotary\\) models are supported"):
        load_encoder("esm2", bad)


def test_fingerprint_stable_and_sensitive(tmp_path, tiny):
    hf, _ = tiny
    copy = _copy(tmp_path, hf)
    assert load_encoder("esm2", hf).fingerprint == load_encoder("esm2", copy).fingerprint
    tensors = load_file(copy / "model.safetensors")
    tensors["esm.encoder.emb_layer_norm_after.bias"] += 1e-3
    save_file(tensors, copy / "model.safetensors")
    assert load_encoder("esm2", hf).fingerprint != load_encoder("esm2", copy).fingerprint


def test_half_precision_on_cpu_close_to_fp32(tiny, proteins):
    hf, _ = tiny
    tok = load_tokenizer("esm2", hf)
    ref = embed(load_encoder("esm2", hf), tok, proteins)
    low = embed(load_encoder("esm2", hf, dtype="bf16"), tok, proteins)
    assert low.dtype == torch.float32
    assert_cosine(low, ref, 0.99)


def test_random_build_is_seeded():
    cfg = ESM2Config(num_layers=1, hidden_size=32, num_heads=4, intermediate_size=64)
    a, b = build_esm2(cfg), build_esm2(cfg)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.slow
def test_compiled_qkv_rotary_matches_eager():
    """The fused path CUDA runs (torch.compile, symbolic lengths), checked on CPU's inductor backend."""
    from virnucpro.models.esm2 import split_qkv_rotary

    compiled = torch.compile(split_qkv_rotary, dynamic=True)
    model = ESM2(ESM2Config(num_layers=1, hidden_size=64, num_heads=4, intermediate_size=64))
    for total in (300, 77):
        qkv = torch.randn(total, 3, 4, 16)
        freqs = torch.arange(total, dtype=torch.float32)[:, None] * model.rope_inv_freq()[None]
        emb = torch.cat((freqs, freqs), -1)[:, None]
        with torch.inference_mode():
            got = compiled(qkv, emb.cos(), emb.sin())
            want = split_qkv_rotary(qkv, emb.cos(), emb.sin())
        for g, w in zip(got, want):
            assert g.is_contiguous()
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_compiled_blocks_match_eager(tiny, proteins):
    """The opt-in compiled-block path (VIRNUCPRO_COMPILE_BLOCKS on CUDA), here on CPU with symbolic lengths."""
    from virnucpro.models.esm2 import ESM2Encoder, load_esm2_checkpoint

    hf, _ = tiny
    tok = load_tokenizer("esm2", hf)
    cfg, state, _, _ = load_esm2_checkpoint(hf)
    eager = ESM2Encoder(build_esm2(cfg, state), backend="sdpa")
    compiled = ESM2Encoder(build_esm2(cfg, state), backend="sdpa", compile_blocks=True)
    assert compiled.compiled_blocks and not eager.compiled_blocks
    for seqs in (proteins[2:4], proteins[5:7]):  # two pack lengths: the second reuses the symbolic graph
        torch.testing.assert_close(embed(compiled, tok, seqs), embed(eager, tok, seqs), atol=1e-5, rtol=1e-5)
