"""The work list: which frame-table rows to embed, its fingerprint, length sorting and stride sharding.

Rows are named by their index in the frame table (`global row`); ids and rows can never drift apart because every
checkpoint part stores global rows next to the embeddings, and the feature file is filled by those indices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from virnucpro.errors import InputError

# Frame-table column each model reads.
COLUMNS = {"dnabert": "nucleotide", "esm2": "protein"}
KINDS = ("dnabert", "esm2")


@dataclass
class WorkList:
    frames_path: Path
    frame_ids: list[str]  # every frame of the table, table order (the feature file's row order)
    rows: np.ndarray  # int64 global rows this run embeds (all rows, or one --shard's stride)
    fingerprint: str  # of the whole frame table: frame ids + both sequences
    shard: tuple[int, int] | None

    @property
    def total(self) -> int:
        return len(self.frame_ids)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError as err:
        raise InputError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4") from err
    if not 0 <= index < count:
        raise InputError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return index, count


def table_fingerprint(table: pl.DataFrame) -> str:
    """sha256 over frame ids and both sequences (lengths included, so no two different tables collide by
    concatenation); what a checkpoint or shard is bound to."""
    digest = hashlib.sha256(b"virnucpro-worklist-v1")
    step = 1 << 16
    for name in ("frame_id", "nucleotide", "protein"):
        digest.update(name.encode())
        column = table[name]
        for start in range(0, len(column), step):
            values = column.slice(start, step).to_list()
            digest.update(np.fromiter((len(v) for v in values), dtype="<i8", count=len(values)).tobytes())
            digest.update("".join(values).encode())
    return digest.hexdigest()


def load_worklist(frames_path: str | Path, shard: tuple[int, int] | None = None) -> WorkList:
    frames_path = Path(frames_path)
    if not frames_path.exists():
        raise InputError(f"{frames_path}: frame table not found")
    try:
        table = pl.read_parquet(frames_path, columns=["frame_id", "nucleotide", "protein"])
    except Exception as err:  # polars raises several types for a missing column or a non-parquet file
        raise InputError(f"{frames_path}: cannot read frame_id/nucleotide/protein columns: {err}") from err
    for name in ("frame_id", "nucleotide", "protein"):
        nulls = table[name].null_count()
        if nulls:
            raise InputError(f"{frames_path}: column {name} has {nulls} missing values")
    empty = table.filter((pl.col("nucleotide").str.len_bytes() == 0) | (pl.col("protein").str.len_bytes() == 0))
    if len(empty):
        raise InputError(f"{frames_path}: {len(empty)} frames with an empty sequence (first: {empty['frame_id'][0]})")
    if table["frame_id"].n_unique() != len(table):
        raise InputError(f"{frames_path}: duplicate frame ids")
    rows = np.arange(len(table), dtype=np.int64)
    if shard is not None:
        # Stride over the table order: a shard never needs the token lengths of the other shards.
        rows = rows[shard[0] :: shard[1]]
    return WorkList(frames_path, table["frame_id"].to_list(), rows, table_fingerprint(table), shard)


def sorted_order(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """`rows` ordered longest first (ties by row) [ARCH-11]: dense packs, and the largest pack (the one that
    could run out of memory) comes first instead of after hours of work."""
    order = np.lexsort((rows, -lengths.astype(np.int64)))
    return rows[order]


def stride_shard(sorted_rows: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank r takes sorted items r, r+world, ... [GPU-02]: every rank gets the same length mix, so they finish
    together."""
    return sorted_rows[rank::world]
