"""Variable-length (packed) self-attention over a token stream holding many sequences.

All backends take q, k, v of shape [total_tokens, heads, head_dim] and `cu_seqlens` (int32, [batch + 1], the
cumulative sequence starts, first 0, last total_tokens); attention never crosses a sequence boundary.
Optional `alibi_slopes` [heads] adds the symmetric ALiBi bias -slope_h * |i - j| (DNABERT-2 / MosaicBERT style).
`max_seqlen` is a host int (the packer knows it), so no backend reads it back from the device.

Backends (same numbers from each, tests compare them):
- "flash_attn":   `flash_attn.flash_attn_varlen_func` (CUDA, fp16/bf16) when the flash-attn package is installed;
                  ALiBi natively.
- "torch_varlen": PyTorch's own varlen FlashAttention `torch.nn.attention.varlen.varlen_attn` (CUDA, fp16/bf16,
                  torch >= 2.10); no ALiBi.
- "flex":         FlexAttention with a block-sparse document mask built from cu_seqlens (and an ALiBi score_mod);
                  compiled on GPU, eager elsewhere; any dtype.
- "sdpa":         one torch SDPA call per sequence. The reference path, and the CPU path.

`resolve_backend("auto", ...)` picks, in order: flash_attn, torch_varlen (not with ALiBi), flex on CUDA; sdpa on
CPU (or when nothing else fits). An explicit backend that cannot run the request raises ValueError.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import weakref
from typing import Any, Callable

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "flash_attn", "torch_varlen", "flex", "sdpa")
FLEX_BLOCK_SIZE = 128


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


# ------------------------------------------------------------------------------------------------ availability

@functools.cache
def has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@functools.cache
def has_torch_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def has_flex() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


_HALF = (torch.float16, torch.bfloat16)


def backend_supports(backend: str, *, device: torch.device | str, dtype: torch.dtype, alibi: bool) -> str | None:
    """None if `backend` can run this request, else the reason it cannot."""
    device = torch.device(device)
    if backend == "sdpa":
        return None
    if backend == "flex":
        return None if has_flex() else "torch.nn.attention.flex_attention is not available in this torch"
    if backend in ("flash_attn", "torch_varlen"):
        if backend == "flash_attn" and not has_flash_attn():
            return "the flash-attn package is not installed"
        if backend == "torch_varlen" and not has_torch_varlen():
            return "torch.nn.attention.varlen is not available in this torch"
        if backend == "torch_varlen" and alibi:
            return "torch varlen_attn has no ALiBi bias"
        if device.type != "cuda":
            return f"{backend} needs a CUDA device"
        if dtype not in _HALF:
            return f"{backend} needs fp16 or bf16, not {str(dtype).removeprefix('torch.')}"
        return None
    return f"unknown attention backend {backend!r}; choose from {', '.join(BACKENDS)}"


def available_backends(*, device: torch.device | str, dtype: torch.dtype, alibi: bool) -> list[str]:
    return [b for b in BACKENDS[1:] if backend_supports(b, device=device, dtype=dtype, alibi=alibi) is None]


@functools.cache
def _auto(device_type: str, dtype: torch.dtype, alibi: bool) -> str:
    if device_type != "cuda":
        # Per-sequence SDPA is exact and fastest on CPU (flex on CPU materialises the whole pack's score matrix).
        return "sdpa"
    for candidate in ("flash_attn", "torch_varlen", "flex"):
        if backend_supports(candidate, device=device_type, dtype=dtype, alibi=alibi) is None:
            return candidate
    return "sdpa"


def resolve_backend(backend: str, *, device: torch.device | str, dtype: torch.dtype, alibi: bool) -> str:
    """The concrete backend for `backend` ("auto" or a name); ValueError if it cannot run this request."""
    device = torch.device(device)
    if backend == "auto":
        return _auto(device.type, dtype, alibi)
    reason = backend_supports(backend, device=device, dtype=dtype, alibi=alibi)
    if reason is not None:
        raise ValueError(f"attention backend {backend!r} unusable here: {reason}")
    return backend


# ------------------------------------------------------------------------------------------------ sdpa

def sdpa_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                alibi: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Reference backend: one SDPA call per sequence (exact, slow on GPU, fine on CPU)."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        # [L, H, D] -> [1, H, L, D]: 4-D inputs reach the fused CPU flash kernel; 3-D ones fall back to the
        # unfused math path (about 8x slower on CPU in torch 2.11).
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        mask = None if alibi is None else alibi_bias(alibi, end - start, dtype=q.dtype, device=q.device)[None]
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale)
        out[start:end] = o[0].transpose(0, 1)
    return out


# ------------------------------------------------------------------------------------------------ flex

def document_block_mask(cu_seqlens: torch.Tensor, total_tokens: int, block_size: int = FLEX_BLOCK_SIZE):
    """A FlexAttention BlockMask that keeps every token inside its own sequence, built directly from cu_seqlens.

    `create_block_mask` would evaluate the mask over all T x T pairs; here only per-block document ranges are
    computed (O(T + (T/block)^2) device work, no host sync): a (q block, kv block) pair is skipped when their
    document ranges do not overlap, "full" (no mask_mod evaluated) when both lie inside the same single document,
    and partial otherwise. Returns (block_mask, doc) where doc [nblocks * block] is the token -> sequence table the
    mask_mod reads; tail padding gets its own document id (batch) so it never matches a real token.
    """
    from torch.nn.attention.flex_attention import BlockMask

    device = cu_seqlens.device
    batch = cu_seqlens.numel() - 1
    nblocks = -(-total_tokens // block_size)
    padded = nblocks * block_size
    tokens = torch.arange(padded, device=device, dtype=cu_seqlens.dtype)
    doc = torch.searchsorted(cu_seqlens[1:], tokens, right=True)  # == batch for tail padding
    blocks = doc.view(nblocks, block_size)
    first, last = blocks[:, 0], blocks[:, -1]
    pure = first == last  # one document, no padding (padding has id `batch`, a block never mixes only padding)
    overlap = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
    full = pure[:, None] & pure[None, :] & (first[:, None] == first[None, :])
    partial = overlap & ~full

    def compact(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Row-wise indices of the True entries first, in column order (a stable sort of ~m).
        counts = m.sum(-1, dtype=torch.int32)
        order = torch.sort((~m).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
        return counts[None, None], order[None, None]

    kv_num, kv_idx = compact(partial)
    full_num, full_idx = compact(full)

    def mask_mod(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    mask = BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod,
                                    seq_lengths=(total_tokens, total_tokens))
    return mask, doc


# One-entry cache: all layers of a forward share one pack, so the mask is built once per pack. Keyed on the
# cu_seqlens tensor object (weakly) and its version counter where it has one; callers must not rewrite a
# cu_seqlens tensor in place inside inference mode while reusing it (build a new tensor per pack).
_mask_cache: dict[str, Any] = {"ref": None, "key": None, "value": None}


def _cached_document_mask(cu_seqlens: torch.Tensor, total_tokens: int):
    try:
        version = cu_seqlens._version
    except RuntimeError:  # inference tensors carry no version counter
        version = None
    key = (total_tokens, version, cu_seqlens.device)
    ref = _mask_cache["ref"]
    if ref is not None and ref() is cu_seqlens and _mask_cache["key"] == key:
        return _mask_cache["value"]
    value = document_block_mask(cu_seqlens, total_tokens)
    _mask_cache.update(ref=weakref.ref(cu_seqlens), key=key, value=value)
    return value


# How FlexAttention is compiled on GPU. Pack lengths change on every call, so the kernel is compiled once with a
# symbolic length (dynamic=True); a static compile would recompile per length. VIRNUCPRO_FLEX_DYNAMIC=auto leaves
# it to torch.compile's automatic dynamic shapes (static first, symbolic from the second length: one compile more),
# =0 forces static shapes. (Inductor's CPU flex template fails to build with symbolic lengths in torch 2.11, hence
# the static compile in the CPU test.)
FLEX_DYNAMIC: bool | None = {"auto": None, "0": False}.get(os.environ.get("VIRNUCPRO_FLEX_DYNAMIC", "1"), True)


@functools.cache
def _flex_fn(compiled: bool, dynamic: bool | None = None) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    # Every (dtype, head_dim, score_mod or not) combination is its own compiled graph of this one function, twice
    # with automatic dynamic shapes; dynamo's default limit (8) would silently drop a test run or a multi-model
    # process to the unfused eager path.
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    return torch.compile(flex_attention, dynamic=dynamic)


def flex_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                alibi: torch.Tensor | None = None, scale: float | None = None, *, compiled: bool | None = None,
                dynamic: bool | None = FLEX_DYNAMIC, block_mask=None,
                kernel_options: dict | None = None) -> torch.Tensor:
    """FlexAttention over a pack; compiled by default on CUDA (eager elsewhere: the unfused reference).
    kernel_options: passed to flex_attention (e.g. BLOCK_M/BLOCK_N: the kernel tiles must divide the mask's block
    size, and the H100 default tile for fp16/bf16 head_dim 64 is 128 x 128, so a 64-token block mask needs them)."""
    total = q.shape[0]
    if block_mask is None:
        block_mask, _ = _cached_document_mask(cu_seqlens, total)
    if compiled is None:
        compiled = q.is_cuda and os.environ.get("VIRNUCPRO_NO_COMPILE") != "1"
    score_mod = None
    if alibi is not None:
        slopes = alibi.to(device=q.device, dtype=torch.float32)

        # Positions are global token indices; inside one document |q - kv| is the in-sequence distance, and
        # cross-document pairs are masked anyway.
        def score_mod(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx - kv_idx).abs()

    # [T, H, D] -> [1, H, T, D] (a view; the kernels take strides)
    qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    out = _flex_fn(bool(compiled), dynamic)(qh, kh, vh, score_mod=score_mod, block_mask=block_mask, scale=scale,
                                            kernel_options=kernel_options)
    return out.squeeze(0).transpose(0, 1)


# ------------------------------------------------------------------------------------------------ flash / varlen

def flash_attn_varlen(q, k, v, cu_seqlens, max_seqlen: int, alibi=None, scale=None) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    slopes = None if alibi is None else alibi.to(device=q.device, dtype=torch.float32)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p=0.0,
                                  softmax_scale=scale, causal=False, alibi_slopes=slopes)


def torch_varlen(q, k, v, cu_seqlens, max_seqlen: int, scale=None) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    # The flash kernel wants a unit-stride last dim and int32 offsets; v is often a strided view of a fused qkv.
    return varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens, cu_seqlens, max_seqlen,
                       max_seqlen, scale=scale)


# ------------------------------------------------------------------------------------------------ entry point

def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                     *, alibi_slopes: torch.Tensor | None = None, backend: str = "auto",
                     scale: float | None = None) -> torch.Tensor:
    """Packed attention; see the module docstring for shapes. Returns [total_tokens, heads, head_dim]."""
    name = resolve_backend(backend, device=q.device, dtype=q.dtype, alibi=alibi_slopes is not None)
    return run_backend(name, q, k, v, cu_seqlens, max_seqlen, alibi_slopes=alibi_slopes, scale=scale)


def run_backend(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int, *, alibi_slopes: torch.Tensor | None = None,
                scale: float | None = None) -> torch.Tensor:
    """`varlen_attention` for an already resolved backend name: no availability checks, so a model that resolved
    its backend once can call it inside a torch.compile'd block without tracing the checks."""
    if name == "flash_attn":
        return flash_attn_varlen(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, scale)
    if name == "torch_varlen":
        return torch_varlen(q, k, v, cu_seqlens, max_seqlen, scale)
    if name == "flex":
        return flex_varlen(q, k, v, cu_seqlens, alibi_slopes, scale)
    return sdpa_varlen(q, k, v, cu_seqlens, alibi=alibi_slopes, scale=scale)
