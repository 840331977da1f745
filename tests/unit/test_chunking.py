"""Chunk boundaries: the SPEC's worked examples, and properties against an independent re-derivation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.preprocess.chunking import chunk_bounds, chunk_id


@pytest.mark.parametrize(
    ("length", "chunk_length", "expected"),
    [
        (700, 300, [(0, 300), (233, 533), (466, 700)]),
        (1000, 300, [(0, 300), (249, 549), (498, 798), (747, 1000)]),
        (301, 300, [(0, 300), (150, 301)]),
        (1200, 500, [(0, 500), (399, 899), (798, 1200)]),
        (600, 300, [(0, 300), (300, 600)]),
        (1500, 500, [(0, 500), (500, 1000), (1000, 1500)]),
        (300, 300, [(0, 300)]),
        (150, 300, [(0, 150)]),
        (1, 500, [(0, 1)]),
        (0, 300, []),
    ],
)
def test_spec_examples_in_compatible_mode(length, chunk_length, expected):
    assert chunk_bounds(length, chunk_length, "compatible") == expected


@pytest.mark.parametrize(
    ("length", "chunk_length", "expected"),
    [
        (700, 300, [(0, 300), (200, 500), (400, 700)]),
        (301, 300, [(0, 300), (1, 301)]),
        (1000, 300, [(0, 300), (233, 533), (466, 766), (700, 1000)]),
        (900, 300, [(0, 300), (300, 600), (600, 900)]),
        (150, 300, [(0, 150)]),
    ],
)
def test_even_mode_examples(length, chunk_length, expected):
    assert chunk_bounds(length, chunk_length, "even") == expected


def test_chunk_id_is_one_based():
    assert chunk_id("contig_7", 1) == "contig_7_chunk_1"


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown chunking mode"):
        chunk_bounds(1000, 300, "sloppy")  # type: ignore[arg-type]


def reference_walk(length: int, chunk_length: int) -> list[tuple[int, int]]:
    """The reference loop, re-derived by hand: walk k*C, pulling each chunk left by the running sum of moves.

    Moves: the total overlap divided by the number of chunks (not boundaries), rounded down; the
    `overlap - floor * (n - 1)` first moves get one more; a move list is then read only as far as there are
    chunks, the last move (0) never being applied.
    """
    n = math.ceil(length / chunk_length)
    overlap = n * chunk_length - length
    floor = int(overlap / n)
    extra = overlap - floor * (n - 1)
    moves = [floor + 1] * extra + [floor] * max(0, n - 1 - extra) + [0]
    bounds, pulled = [], 0
    for k, position in enumerate(range(0, length, chunk_length)):
        start = position - pulled
        bounds.append((start, min(start + chunk_length, length)))
        pulled += moves[k]
    return bounds


@settings(max_examples=300, deadline=None)
@given(length=st.integers(min_value=1, max_value=20_000), chunk_length=st.sampled_from([300, 500, 7, 64]))
def test_compatible_matches_the_reference_walk(length, chunk_length):
    assert chunk_bounds(length, chunk_length, "compatible") == reference_walk(length, chunk_length)


@settings(max_examples=300, deadline=None)
@given(length=st.integers(min_value=1, max_value=20_000), chunk_length=st.sampled_from([300, 500, 7, 64]),
       mode=st.sampled_from(["compatible", "even"]))
def test_chunks_cover_the_sequence_in_order(length, chunk_length, mode):
    bounds = chunk_bounds(length, chunk_length, mode)
    assert len(bounds) == max(1, math.ceil(length / chunk_length))
    assert bounds[0][0] == 0
    assert bounds[-1][1] == length
    for (start, end), (next_start, next_end) in zip(bounds, bounds[1:]):
        assert start < next_start <= end  # overlapping or touching, never a gap
        assert end <= next_end
    assert all(end - start <= chunk_length for start, end in bounds)
    assert all(end - start == chunk_length for start, end in bounds[:-1]) or length < chunk_length


@settings(max_examples=300, deadline=None)
@given(length=st.integers(min_value=1, max_value=20_000), chunk_length=st.sampled_from([300, 500, 7, 64]))
def test_even_mode_chunks_are_full_and_overlaps_differ_by_at_most_one(length, chunk_length):
    bounds = chunk_bounds(length, chunk_length, "even")
    if length >= chunk_length:
        assert all(end - start == chunk_length for start, end in bounds)
    overlaps = [end - next_start for (_, end), (next_start, _) in zip(bounds, bounds[1:])]
    if overlaps:
        assert max(overlaps) - min(overlaps) <= 1
        assert sum(overlaps) == len(bounds) * chunk_length - length
