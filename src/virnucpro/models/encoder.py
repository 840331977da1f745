"""The contract between the language models and the embedding engine.

The engine never knows which model it drives: it asks a `SequenceTokenizer` (CPU only, picklable, safe inside
spawned DataLoader workers: it must never import or initialise CUDA) for token ids, packs them into one stream with
`cu_seqlens`, and hands the pack to a `PackedEncoder`, which returns one pooled embedding per sequence using the
model's own pooling rule (ESM-2: mean over residues, BOS/EOS excluded, capped at 1024 residues; DNABERT-S: mean over
all tokens including [CLS]/[SEP]).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class SequenceTokenizer(Protocol):
    kind: str  # "esm2" | "dnabert"
    # Longest token list (special tokens included) the model accepts; `encode` applies the model's documented
    # outlier rule to anything longer (ESM-2: truncate to 1024 residues as the reference does).
    max_tokens: int

    def encode(self, sequence: str) -> list[int]:
        """Token ids of one sequence, special tokens included."""
        ...


@runtime_checkable
class PackedEncoder(Protocol):
    kind: str  # "esm2" | "dnabert"
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    fingerprint: str  # stable digest of config + weights: checkpoints refuse a different model
    device: torch.device
    dtype: torch.dtype

    def embed_packed(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """input_ids: int64 [total_tokens]; cu_seqlens: int32 [batch + 1]; returns float32 [batch, hidden_size]."""
        ...
