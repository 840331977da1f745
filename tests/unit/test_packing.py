from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from virnucpro.models.packing import pack_token_ids, plan_packs, position_ids_from_cu_seqlens, sequence_index


def test_pack_layout():
    pack = pack_token_ids([[0, 5, 2], [0, 2], [0, 7, 8, 9, 2]])
    assert pack.input_ids.dtype == torch.int64 and pack.cu_seqlens.dtype == torch.int32
    assert pack.input_ids.tolist() == [0, 5, 2, 0, 2, 0, 7, 8, 9, 2]
    assert pack.cu_seqlens.tolist() == [0, 3, 5, 10]
    assert pack.position_ids.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]
    assert pack.max_seqlen == 5 and pack.num_sequences == 3 and pack.num_tokens == 10
    assert sequence_index(pack.cu_seqlens, 10).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=40), st.integers(1, 120))
def test_plan_packs_covers_everything_once_within_budget(lengths, budget):
    packs = plan_packs(lengths, budget)
    flat = [i for p in packs for i in p]
    assert sorted(flat) == list(range(len(lengths)))
    for p in packs:
        assert sum(lengths[i] for i in p) <= budget or len(p) == 1  # only a lone outlier may exceed
    # length-sorted: packs never interleave lengths
    ordered = [lengths[i] for i in flat]
    assert ordered == sorted(ordered)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=20))
def test_positions_restart_per_sequence(lengths):
    pack = pack_token_ids([[1] * n for n in lengths])
    expected = [p for n in lengths for p in range(n)]
    assert pack.position_ids.tolist() == expected
    assert position_ids_from_cu_seqlens(pack.cu_seqlens, pack.num_tokens).tolist() == expected


def test_max_sequences_per_pack():
    assert plan_packs([1] * 5, 100, max_sequences_per_pack=2) == [[0, 1], [2, 3], [4]]
