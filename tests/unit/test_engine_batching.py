"""Work list, token budget and pack planning: the pure parts of the engine."""

from __future__ import annotations

import sys

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.engine.batching import MAX_BUDGET, ModelShape, bytes_per_token, plan_packs, token_budget
from virnucpro.engine.worklist import load_worklist, parse_shard, sorted_order, stride_shard, table_fingerprint
from virnucpro.errors import InputError

ESM3B = ModelShape(hidden_size=2560, intermediate_size=10240, num_layers=36, num_heads=40, dtype=torch.float16)
DNABERT = ModelShape(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, dtype=torch.float16)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 400), max_size=200), st.integers(16, 600), st.integers(16, 1000))
def test_packs_cover_in_order_within_budget_outliers_alone(lengths, budget, max_tokens):
    lengths = np.array(sorted(lengths, reverse=True), dtype=np.int64)
    bounds = plan_packs(lengths, budget, max_tokens)
    assert bounds[0] == 0 and bounds[-1] == len(lengths)
    assert np.all(np.diff(bounds) >= 1) or len(lengths) == 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        pack = lengths[a:b]
        outliers = (pack > budget) | (pack > max_tokens)
        if outliers.any():
            assert len(pack) == 1  # PACK-06a: an outlier is alone in a batch of one
        else:
            assert pack.sum() <= budget


def test_packs_are_dense_on_sorted_input():
    rng = np.random.default_rng(0)
    lengths = np.sort(rng.integers(30, 60, size=5000))[::-1]
    bounds = plan_packs(lengths, 4096, 10_000)
    sums = np.add.reduceat(lengths, bounds[:-1])
    # Every pack but the last is filled to within one sequence of the budget.
    assert (sums[:-1] > 4096 - 60).all()


def test_max_sequences_caps_a_pack():
    bounds = plan_packs(np.ones(100, dtype=np.int64), 1000, 1000, max_sequences=16)
    assert np.diff(bounds).max() == 16


def test_budget_follows_free_memory_and_shape():
    cuda = torch.device("cuda", 0)
    small, _ = token_budget(ESM3B, cuda, max_tokens=1026, free_bytes=8 << 30)
    large, _ = token_budget(ESM3B, cuda, max_tokens=1026, free_bytes=40 << 30)
    assert small < large <= MAX_BUDGET  # PACK-03: derived from memory, not a constant
    assert small == (8 << 30) // 2 // bytes_per_token(ESM3B)
    dnabert, _ = token_budget(DNABERT, cuda, max_tokens=1 << 40, free_bytes=8 << 30)
    assert dnabert > small  # a smaller model gets more tokens from the same memory
    # Never below the model limit: only true outliers are isolated.
    tiny, _ = token_budget(ESM3B, cuda, max_tokens=1026, free_bytes=1 << 20)
    assert tiny == 1026
    fp32 = ModelShape(2560, 10240, 36, 40, torch.float32)
    assert bytes_per_token(fp32) > bytes_per_token(ESM3B)


def test_budget_of_a_model_without_length_limit_stays_finite():
    # DNABERT-S (ALiBi) declares no token limit: the budget must still come from memory, not from that "limit".
    unbounded = sys.maxsize
    budget, _ = token_budget(DNABERT, torch.device("cuda", 0), max_tokens=unbounded, free_bytes=1 << 30)
    assert budget == (1 << 30) // 2 // bytes_per_token(DNABERT)
    assert token_budget(DNABERT, torch.device("cpu"), max_tokens=unbounded)[0] == 8192


def test_budget_cpu_default_and_request():
    assert token_budget(ESM3B, torch.device("cpu"), max_tokens=1026)[1] == "cpu-default"
    assert token_budget(ESM3B, torch.device("cpu"), max_tokens=1026, requested=77) == (77, "requested")


def test_sort_and_stride_shard_partition_exactly():
    rows = np.arange(1000, dtype=np.int64)[::3]
    lengths = np.random.default_rng(1).integers(1, 50, size=len(rows))
    order = sorted_order(rows, lengths)
    by_row = dict(zip(rows.tolist(), lengths.tolist()))
    sorted_lengths = [by_row[r] for r in order.tolist()]
    assert sorted_lengths == sorted(sorted_lengths, reverse=True)  # ARCH-11: longest first
    shards = [stride_shard(order, r, 3) for r in range(3)]
    together = np.concatenate(shards)
    assert sorted(together.tolist()) == sorted(rows.tolist())  # GPU-02: every item exactly once
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def _table(proteins=("MKV", "MA"), nucleotides=("ATGAAAGTT", "ATGGCA")):
    return pl.DataFrame({"frame_id": [f"f{i}" for i in range(len(proteins))], "nucleotide": list(nucleotides),
                         "protein": list(proteins)})


def test_fingerprint_sees_every_change():
    base = table_fingerprint(_table())
    assert base == table_fingerprint(_table())
    assert base != table_fingerprint(_table(proteins=("MKV", "MC")))
    assert base != table_fingerprint(_table(nucleotides=("ATGAAAGTT", "ATGGCC")))
    # Concatenation ambiguity: ("MKV","MA") vs ("MK","VMA") must differ.
    assert base != table_fingerprint(_table(proteins=("MK", "VMA")))


def test_load_worklist_shard_and_errors(tmp_path):
    path = tmp_path / "frames.parquet"
    table = pl.DataFrame({"frame_id": [f"f{i}" for i in range(10)], "nucleotide": ["ACGT"] * 10,
                          "protein": ["MK"] * 10})
    table.write_parquet(path)
    full = load_worklist(path)
    shard = load_worklist(path, (1, 3))
    assert shard.rows.tolist() == [1, 4, 7]
    assert shard.fingerprint == full.fingerprint  # shards of one table aggregate together
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x", "1-2"):
        with pytest.raises(InputError):
            parse_shard(bad)
    table.with_columns(pl.lit("").alias("protein")).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(InputError, match="empty"):
        load_worklist(tmp_path / "empty.parquet")
    table.drop("protein").write_parquet(tmp_path / "missing.parquet")
    with pytest.raises(InputError):
        load_worklist(tmp_path / "missing.parquet")
