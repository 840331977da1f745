"""Variable-length (packed) self-attention over a token stream holding many sequences.

All backends take q, k, v of shape [total_tokens, heads, head_dim] and `cu_seqlens` (int32, [batch + 1], the
cumulative sequence starts, first 0, last total_tokens); attention never crosses a sequence boundary.
Optional `alibi_slopes` [heads] adds the symmetric ALiBi bias -slope_h * |i - j| (DNABERT-2 / MosaicBERT style).

Backends (same numbers from each, tests compare them):
- "sdpa": per-sequence torch SDPA. The reference path, and the CPU path.
(GPU backends are added beside it; `select_backend("auto", ...)` picks the best available.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa")


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi head slopes as in the ALiBi paper and MosaicBERT: geometric for a power-of-two head count, otherwise the
    slopes of the nearest lower power of two followed by every other slope of twice that power."""

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = power_of_two_slopes(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_two_slopes(closest) + power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, length: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[heads, length, length] additive bias -slope * |i - j|."""
    positions = torch.arange(length, device=device)
    distance = (positions[None, :] - positions[:, None]).abs().to(torch.float32)
    return (-slopes.to(device=device, dtype=torch.float32)[:, None, None] * distance).to(dtype)


def sdpa_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                alibi: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Reference backend: one SDPA call per sequence (exact, slow on GPU, fine on CPU)."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        # [L, H, D] -> [H, L, D]
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        mask = None if alibi is None else alibi_bias(alibi, end - start, dtype=q.dtype, device=q.device)
        out[start:end] = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale).transpose(0, 1)
    return out


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                     *, alibi_slopes: torch.Tensor | None = None, backend: str = "auto",
                     scale: float | None = None) -> torch.Tensor:
    """Packed attention; see the module docstring for shapes. Returns [total_tokens, heads, head_dim]."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(BACKENDS)}")
    return sdpa_varlen(q, k, v, cu_seqlens, alibi=alibi_slopes, scale=scale)
