"""Cutting a sequence into chunks of the classifier's expected length (300 or 500 nt).

Two modes (see docs/method.md):

* ``compatible`` (default) reproduces the reference VirNucPro arithmetic exactly, quirk included: the total overlap
  ``n*C - L`` is divided by the number of chunks ``n`` (not by the ``n-1`` boundaries), rounded up per boundary while
  the remainder lasts, so the last chunk is often shorter than C. The published classifier weights were trained on
  chunks cut this way.
* ``even`` spreads the overlap cleanly over the ``n-1`` boundaries: every chunk is exactly C long and the last one
  ends exactly at L.

Sequences no longer than C are one chunk (no padding); empty sequences have no chunk.
"""

from __future__ import annotations

from typing import Literal

ChunkingMode = Literal["compatible", "even"]
CHUNKING_MODES: tuple[str, ...] = ("compatible", "even")


def chunk_count(length: int, chunk_length: int) -> int:
    return -(-length // chunk_length)


def compatible_shifts(length: int, chunk_length: int) -> list[int]:
    """How far each chunk k (0-based) is moved left of k*C, cumulatively, in the reference arithmetic."""
    n = chunk_count(length, chunk_length)
    overlap = n * chunk_length - length
    per_chunk, remainder = divmod(overlap, n)
    # The reference gives `per_chunk + 1` to the first (per_chunk + remainder) boundaries and `per_chunk` to the
    # rest; the count is computed against n-1 boundaries, which is where the "last chunk is shorter" quirk comes from.
    rounded_up = min(n - 1, per_chunk + remainder)
    shifts = [0]
    for boundary in range(n - 1):
        shifts.append(shifts[-1] + per_chunk + (1 if boundary < rounded_up else 0))
    return shifts


def even_shifts(length: int, chunk_length: int) -> list[int]:
    n = chunk_count(length, chunk_length)
    overlap = n * chunk_length - length
    if n == 1:
        return [0]
    per_boundary, remainder = divmod(overlap, n - 1)
    shifts = [0]
    for boundary in range(n - 1):
        shifts.append(shifts[-1] + per_boundary + (1 if boundary < remainder else 0))
    return shifts


def chunk_bounds(length: int, chunk_length: int, mode: ChunkingMode = "compatible") -> list[tuple[int, int]]:
    """Half-open (start, end) of every chunk of a sequence of `length` nt, in order; [] for an empty sequence."""
    if chunk_length <= 0:
        raise ValueError(f"chunk length must be positive, got {chunk_length}")
    if length <= 0:
        return []
    if length <= chunk_length:
        return [(0, length)]
    if mode == "compatible":
        shifts = compatible_shifts(length, chunk_length)
    elif mode == "even":
        shifts = even_shifts(length, chunk_length)
    else:
        raise ValueError(f"unknown chunking mode {mode!r}; expected one of {', '.join(CHUNKING_MODES)}")
    bounds = []
    for k, shift in enumerate(shifts):
        start = k * chunk_length - shift
        bounds.append((start, min(start + chunk_length, length)))
    return bounds


def chunk_id(sequence_id: str, chunk_number: int) -> str:
    """`{seq_id}_chunk_{k}` with k 1-based, as in the reference."""
    return f"{sequence_id}_chunk_{chunk_number}"
