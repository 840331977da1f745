"""Token budgets and pack plans.

A pack is a run of consecutive items of a rank's length-sorted work list whose token lengths sum to at most the
budget. The plan is a pure function of (sorted rows, lengths, budget, max_tokens), so a resumed run with the same
budget rebuilds the same packs and can skip the finished ones whole (identical numbers after a resume).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# A pack past this many tokens no longer raises throughput (the GEMMs are already saturated on an H200 at ~32K
# tokens) but it coarsens pipelining and checkpoint granularity, so the memory-derived budget is capped here.
MAX_BUDGET = 1 << 17
CPU_BUDGET = 8192
# Fraction of the free memory (after the weights are loaded) that one pack's activations may use; the rest covers
# the caching allocator's fragmentation, the attention backend's workspace and the packs in flight.
MEMORY_FRACTION = 0.5


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    dtype: torch.dtype

    @classmethod
    def of(cls, encoder) -> "ModelShape":
        return cls(encoder.hidden_size, encoder.intermediate_size, encoder.num_layers, encoder.num_heads,
                   encoder.dtype)


def bytes_per_token(shape: ModelShape) -> int:
    """Peak activation bytes per packed token of one forward pass without autograd. Layers run one after another,
    so the peak is one layer's live tensors: the residual stream and its normalised copy (2h), fused q/k/v (3h),
    attention output and projection (2h), the FFN input projection (2i: gated GELU doubles it) and its activation
    (i), plus fp32 pooling/accumulation (4 bytes x h). Layer count does not multiply the peak (no autograd), it is
    kept in ModelShape for the telemetry."""
    element = torch.finfo(shape.dtype).bits // 8
    return element * (7 * shape.hidden_size + 3 * shape.intermediate_size) + 4 * shape.hidden_size


def token_budget(shape: ModelShape, device: torch.device, *, max_tokens: int, free_bytes: int | None = None,
                 requested: int | None = None) -> tuple[int, str]:
    """(budget, how it was chosen) [PACK-03]. On CUDA: MEMORY_FRACTION of the free memory (torch.cuda.mem_get_info
    after the model is loaded) divided by bytes_per_token, capped at MAX_BUDGET and never below max_tokens (so only
    true outliers are isolated). On CPU a fixed default. `requested` (--token-budget N) wins."""
    if requested is not None:
        return int(requested), "requested"
    # A model limit (ESM-2: 1026 tokens) is a floor, so that only true outliers run alone; a model without one
    # (DNABERT-S, ALiBi: max_tokens is "unbounded") gets no floor.
    floor = max_tokens if max_tokens <= MAX_BUDGET else 0
    if device.type != "cuda":
        return max(CPU_BUDGET, floor), "cpu-default"
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    derived = int(free_bytes * MEMORY_FRACTION) // bytes_per_token(shape)
    budget = max(min(derived, MAX_BUDGET), floor, 1)
    return budget, f"free={free_bytes} bytes_per_token={bytes_per_token(shape)} derived={derived}"


def plan_packs(lengths: np.ndarray, budget: int, max_tokens: int, max_sequences: int = 16384) -> np.ndarray:
    """Pack boundaries over a length-sorted list: returns int64 `bounds` with pack k = items bounds[k]:bounds[k+1].

    Outlier rule [PACK-06, PACK-06a]: an item longer than the budget or than the model limit (max_tokens) is
    packed alone, in a batch of one, whatever its neighbours. Every other pack holds consecutive items while the
    token sum stays <= budget and the count <= max_sequences (bounds the output buffers)."""
    bounds = [0]
    tokens = 0
    count = 0
    for i, length in enumerate(lengths.tolist()):
        outlier = length > budget or length > max_tokens
        if count and (outlier or tokens + length > budget or count >= max_sequences):
            bounds.append(i)
            tokens = count = 0
        tokens += length
        count += 1
        if outlier:
            bounds.append(i + 1)
            tokens = count = 0
    if bounds[-1] != len(lengths):
        bounds.append(len(lengths))
    return np.asarray(bounds, dtype=np.int64)


def packing_efficiency(real_tokens: int, packs: int, budget: int) -> float | None:
    """Real tokens over the capacity the packs offered (packs x budget)."""
    return None if packs == 0 else real_tokens / (packs * budget)
