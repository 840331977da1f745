"""Sequence packing: many token lists concatenated into one stream that the packed encoders consume [PACK-01, PACK-02].

A pack is (input_ids int64 [T], cu_seqlens int32 [B + 1], position_ids int64 [T] restarting at 0 for every
sequence, max_seqlen as a Python int). Attention backends use `cu_seqlens` to keep sequences apart; `max_seqlen`
travels as a host int so no backend has to read it back from the device.

`plan_packs` is the greedy token-budget planner used by `virnucpro embed` (the engine has its own streaming one):
it walks sequences in length order and starts a new pack when the next one would exceed the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True, slots=True)
class Pack:
    input_ids: torch.Tensor  # int64 [T]
    cu_seqlens: torch.Tensor  # int32 [B + 1]
    position_ids: torch.Tensor  # int64 [T]
    max_seqlen: int

    @property
    def num_sequences(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Pack":
        return Pack(self.input_ids.to(device, non_blocking=non_blocking),
                    self.cu_seqlens.to(device, non_blocking=non_blocking),
                    self.position_ids.to(device, non_blocking=non_blocking), self.max_seqlen)


def pack_token_ids(token_lists: Sequence[Sequence[int]]) -> Pack:
    """Concatenate token lists into one pack (CPU tensors; pin or move them afterwards)."""
    if not token_lists:
        raise ValueError("cannot pack zero sequences")
    lengths = [len(t) for t in token_lists]
    if min(lengths) == 0:
        raise ValueError("cannot pack an empty token list")
    total = sum(lengths)
    input_ids = torch.empty(total, dtype=torch.int64)
    offset = 0
    for tokens, length in zip(token_lists, lengths):
        input_ids[offset:offset + length] = torch.as_tensor(tokens, dtype=torch.int64)
        offset += length
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(torch.as_tensor(lengths, dtype=torch.int32), 0)
    return Pack(input_ids, cu_seqlens, position_ids_from_cu_seqlens(cu_seqlens, total), max(lengths))


def sequence_index(cu_seqlens: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """int64 [T]: which sequence each token belongs to. Device-side, no host sync (total_tokens is the pack size the
    caller already knows from input_ids.shape)."""
    tokens = torch.arange(total_tokens, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:], tokens, right=True)


def position_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """int64 [T]: position of each token inside its own sequence (restarts at 0 per sequence)."""
    seq = sequence_index(cu_seqlens, total_tokens)
    tokens = torch.arange(total_tokens, device=cu_seqlens.device, dtype=torch.int64)
    return tokens - cu_seqlens.to(torch.int64)[seq]


def plan_packs(lengths: Sequence[int], max_tokens_per_pack: int, *, max_sequences_per_pack: int | None = None
               ) -> list[list[int]]:
    """Group sequence indices into packs of at most `max_tokens_per_pack` tokens, shortest first.

    Sorting by length keeps neighbours similar, which matters for the padded baselines and for FlexAttention block
    sparsity; a sequence longer than the budget gets a pack of its own (the budget is a target, not a hard limit).
    """
    if max_tokens_per_pack < 1:
        raise ValueError("max_tokens_per_pack must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    packs: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        n = lengths[i]
        full = max_sequences_per_pack is not None and len(current) >= max_sequences_per_pack
        if current and (used + n > max_tokens_per_pack or full):
            packs.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        packs.append(current)
    return packs
