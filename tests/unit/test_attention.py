"""Attention backends: every backend runnable on CPU gives the sdpa reference's numbers (with and without ALiBi),
the FlexAttention document block mask equals the dense document mask, and "auto" picks as documented."""

from __future__ import annotations

import pytest
import torch

from virnucpro.models import attention as A

LENGTHS = [1, 5, 127, 128, 129, 300, 2, 256, 77]


def make_pack(lengths, heads=4, dim=16, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    q, k, v = (torch.randn(total, heads, dim, generator=gen, dtype=dtype) for _ in range(3))
    return q, k, v, cu, max(lengths)


@pytest.mark.parametrize("alibi", [False, True])
def test_flex_eager_matches_sdpa(alibi):
    q, k, v, cu, m = make_pack(LENGTHS)
    slopes = A.alibi_slopes(4) if alibi else None
    ref = A.varlen_attention(q, k, v, cu, m, alibi_slopes=slopes, backend="sdpa")
    got = A.varlen_attention(q, k, v, cu, m, alibi_slopes=slopes, backend="flex")
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=2e-5)


def test_sdpa_alibi_matches_explicit_softmax():
    q, k, v, cu, m = make_pack([7, 3])
    slopes = A.alibi_slopes(4)
    got = A.varlen_attention(q, k, v, cu, m, alibi_slopes=slopes, backend="sdpa", scale=0.3)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))
        pos = torch.arange(e - s)
        scores = qs @ ks.transpose(-1, -2) * 0.3 - slopes[:, None, None] * (pos[None, :] - pos[:, None]).abs()
        torch.testing.assert_close(got[s:e], (scores.softmax(-1) @ vs).transpose(0, 1), atol=1e-6, rtol=1e-5)


def test_document_block_mask_equals_dense_document_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    lengths = [1, 5, 127, 128, 129, 300, 2, 256, 77, 640]
    total = sum(lengths)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    ours, doc = A.document_block_mask(cu, total)
    real = doc[:total]

    def mask_mod(b, h, q_idx, kv_idx):
        return real[q_idx] == real[kv_idx]

    ref = create_block_mask(mask_mod, None, None, total, total, device="cpu")
    # Same set of visited blocks (partial + full) and the same full blocks.
    assert torch.equal(ours.to_dense(), ref.to_dense())
    ours_full = torch.zeros_like(ours.to_dense())
    for i, (n, idx) in enumerate(zip(ours.full_kv_num_blocks[0, 0], ours.full_kv_indices[0, 0])):
        ours_full[0, 0, i, idx[:n].long()] = 1
    ref_full = torch.zeros_like(ours_full)
    for i, (n, idx) in enumerate(zip(ref.full_kv_num_blocks[0, 0], ref.full_kv_indices[0, 0])):
        ref_full[0, 0, i, idx[:n].long()] = 1
    assert torch.equal(ours_full, ref_full)
    assert ours.shape[-2:] == (total, total)


def test_attention_never_crosses_sequences():
    q, k, v, cu, m = make_pack([40, 60, 30])
    for backend in ("sdpa", "flex"):
        base = A.varlen_attention(q, k, v, cu, m, backend=backend, alibi_slopes=A.alibi_slopes(4))
        k2, v2 = k.clone(), v.clone()
        k2[40:100] += 3.0
        v2[40:100] -= 5.0
        out = A.varlen_attention(q, k2, v2, cu, m, backend=backend, alibi_slopes=A.alibi_slopes(4))
        torch.testing.assert_close(out[:40], base[:40], atol=1e-6, rtol=0)
        torch.testing.assert_close(out[100:], base[100:], atol=1e-6, rtol=0)
        assert not torch.allclose(out[40:100], base[40:100])


def test_mask_cache_does_not_leak_between_packs():
    q, k, v, cu, m = make_pack([64, 64])
    a = A.varlen_attention(q, k, v, cu, m, backend="flex")
    cu2 = torch.tensor([0, 100, 128], dtype=torch.int32)  # same T, other boundaries
    b = A.varlen_attention(q, k, v, cu2, 100, backend="flex")
    torch.testing.assert_close(b, A.varlen_attention(q, k, v, cu2, 100, backend="sdpa"), atol=2e-6, rtol=2e-5)
    assert not torch.allclose(a, b)


def test_auto_and_explicit_backend_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert A.resolve_backend("auto", device=cpu, dtype=torch.float32, alibi=False) == "sdpa"
    assert A.resolve_backend("flex", device=cpu, dtype=torch.float32, alibi=True) == "flex"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        A.resolve_backend("torch_varlen", device=cpu, dtype=torch.float16, alibi=False)
    with pytest.raises(ValueError, match="no ALiBi"):
        A.resolve_backend("torch_varlen", device="cuda", dtype=torch.float16, alibi=True)
    with pytest.raises(ValueError, match="needs fp16 or bf16"):
        A.resolve_backend("torch_varlen", device="cuda", dtype=torch.float32, alibi=False)
    with pytest.raises(ValueError, match="unknown attention backend"):
        A.resolve_backend("xformers", device=cpu, dtype=torch.float32, alibi=False)
    # CUDA choices (decided without a GPU: they depend only on what is installed and on the request)
    A._auto.cache_clear()
    monkeypatch.setattr(A, "has_flash_attn", lambda: False)
    assert A._auto("cuda", torch.float16, False) == ("torch_varlen" if A.has_torch_varlen() else "flex")
    assert A._auto("cuda", torch.bfloat16, True) == "flex"
    assert A._auto("cuda", torch.float32, False) == "flex"
    A._auto.cache_clear()
    monkeypatch.setattr(A, "has_flash_attn", lambda: True)
    assert A._auto("cuda", torch.float16, True) == "flash_attn"
    assert A._auto("cuda", torch.float32, True) == "flex"
    A._auto.cache_clear()


@pytest.mark.slow
@pytest.mark.parametrize("alibi", [False, True])
def test_flex_compiled_on_cpu_matches_sdpa(alibi):
    """The compiled FlexAttention path (what runs on GPU) on CPU's inductor backend (static shapes: inductor's CPU
    flex template does not build with symbolic lengths in torch 2.11)."""
    q, k, v, cu, m = make_pack([3, 130, 64, 200])
    slopes = A.alibi_slopes(4) if alibi else None
    ref = A.sdpa_varlen(q, k, v, cu, alibi=slopes)
    with torch.inference_mode():
        got = A.flex_varlen(q, k, v, cu, slopes, compiled=True, dynamic=False)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
