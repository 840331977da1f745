"""FASTA -> frame table: chunk, six-frame translate, keep stop-free frames, stream them to Parquet.

Two tables are written (docs/output.md, section "prepare"):

* frames: one row per kept frame, in input order, chunk order, then F1, F2, F3, R1, R2, R3;
* unreported: one row per input sequence or chunk that gave no kept frame, with the reason.

Memory is bounded by the batch size and the longest record, never by the input size: records are read one at a
time, chunks are translated in batches of about `batch_nucleotides`, and each batch is one Parquet row group. Both
files are written under temporary names and renamed only when the whole input has been read, so an interrupted or
failed run never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from virnucpro import __version__
from virnucpro.io.fasta import UniqueIds, nucleotide_bytes, read_fasta
from virnucpro.preprocess.chunking import ChunkingMode, chunk_bounds, chunk_id
from virnucpro.preprocess.translate import FRAME_NAMES, translate_chunks

EMPTY_SEQUENCE = "empty_sequence"

FRAMES_SCHEMA = pa.schema([
    ("sequence_id", pa.string()),
    ("sequence_index", pa.int64()),
    ("chunk_id", pa.string()),
    ("chunk_index", pa.int32()),
    ("frame_id", pa.string()),
    ("strand", pa.string()),
    ("frame", pa.int8()),
    ("chunk_start", pa.int64()),
    ("chunk_end", pa.int64()),
    ("protein", pa.string()),
    ("nucleotide", pa.string()),
])

UNREPORTED_SCHEMA = pa.schema([
    ("sequence_id", pa.string()),
    ("sequence_index", pa.int64()),
    ("chunk_id", pa.string()),
    ("chunk_index", pa.int32()),
    ("chunk_start", pa.int64()),
    ("chunk_end", pa.int64()),
    ("reason", pa.string()),
])

# Parquet key-value metadata on both tables; `predict` checks chunk_length against the classifier's.
META_CHUNK_LENGTH = b"virnucpro.chunk_length"
META_CHUNKING = b"virnucpro.chunking"
META_INPUT = b"virnucpro.input"
META_VERSION = b"virnucpro.version"


def default_unreported_path(output: Path) -> Path:
    """`frames.parquet` -> `frames.unreported.parquet`, next to it."""
    return output.with_name(f"{output.stem}.unreported.parquet")


@dataclass
class PrepareStats:
    sequences: int = 0
    nucleotides: int = 0
    chunks: int = 0
    frames: int = 0
    unreported_rows: int = 0
    sequences_without_frames: int = 0
    renamed_duplicates: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sequences": self.sequences, "nucleotides": self.nucleotides, "chunks": self.chunks,
            "frames": self.frames, "unreported_rows": self.unreported_rows,
            "sequences_without_frames": self.sequences_without_frames,
            "renamed_duplicates": self.renamed_duplicates, "seconds": round(self.seconds, 3),
            "records_per_second": round(self.sequences / self.seconds, 1) if self.seconds > 0 else None,
            "reasons": dict(sorted(self.reasons.items())),
        }


class _ChunkBatch:
    """Chunks waiting to be translated, with what the frame rows need to know about each."""

    def __init__(self) -> None:
        self.texts: list[bytes] = []
        self.sequence_id: list[str] = []
        self.sequence_index: list[int] = []
        self.chunk_number: list[int] = []
        self.start: list[int] = []
        self.end: list[int] = []
        self.nucleotides = 0

    def add(self, text: bytes, sequence_id: str, sequence_index: int, chunk_number: int, start: int, end: int) -> None:
        self.texts.append(text)
        self.sequence_id.append(sequence_id)
        self.sequence_index.append(sequence_index)
        self.chunk_number.append(chunk_number)
        self.start.append(start)
        self.end.append(end)
        self.nucleotides += end - start

    def __len__(self) -> int:
        return len(self.texts)


class _SequenceFrameTracker:
    """Counts, per sequence, the chunks still to be translated and whether any kept a frame.

    Chunks of one long sequence may be split over batches, so "this sequence gave no frame at all" is known only
    when its last chunk has been translated.
    """

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}
        self.has_frame: dict[int, bool] = {}

    def expect(self, sequence_index: int, chunks: int) -> None:
        self.pending[sequence_index] = chunks
        self.has_frame[sequence_index] = False

    def done(self, sequence_index: int, kept_frame: bool) -> bool | None:
        """Record one translated chunk; return whether the sequence had any frame once all its chunks are done."""
        self.has_frame[sequence_index] |= kept_frame
        self.pending[sequence_index] -= 1
        if self.pending[sequence_index] == 0:
            del self.pending[sequence_index]
            return self.has_frame.pop(sequence_index)
        return None


def prepare(
    input_path: str | Path,
    output: str | Path,
    *,
    chunk_length: int,
    chunking: ChunkingMode = "compatible",
    unreported: str | Path | None = None,
    rename_duplicates: bool = False,
    batch_nucleotides: int = 2_000_000,
) -> PrepareStats:
    """Write the frame table to `output` and the unreported table next to it; return counts."""
    started = time.perf_counter()
    input_path, output = Path(input_path), Path(output)
    unreported_path = Path(unreported) if unreported is not None else default_unreported_path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    unreported_path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        META_CHUNK_LENGTH: str(chunk_length).encode(),
        META_CHUNKING: chunking.encode(),
        META_INPUT: str(input_path).encode(),
        META_VERSION: __version__.encode(),
    }
    frames_tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    unreported_tmp = unreported_path.with_name(f".{unreported_path.name}.tmp-{os.getpid()}")
    stats = PrepareStats()
    frames_writer = pq.ParquetWriter(frames_tmp, FRAMES_SCHEMA.with_metadata(metadata), compression="zstd")
    unreported_writer = pq.ParquetWriter(unreported_tmp, UNREPORTED_SCHEMA.with_metadata(metadata),
                                         compression="zstd")
    try:
        _run(input_path, chunk_length, chunking, rename_duplicates, batch_nucleotides, stats,
             frames_writer, unreported_writer)
        frames_writer.close()
        unreported_writer.close()
        os.replace(unreported_tmp, unreported_path)
        os.replace(frames_tmp, output)
    except BaseException:
        for writer in (frames_writer, unreported_writer):
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
        frames_tmp.unlink(missing_ok=True)
        unreported_tmp.unlink(missing_ok=True)
        raise
    stats.seconds = time.perf_counter() - started
    return stats


def _run(input_path: Path, chunk_length: int, chunking: ChunkingMode, rename_duplicates: bool,
         batch_nucleotides: int, stats: PrepareStats, frames_writer: pq.ParquetWriter,
         unreported_writer: pq.ParquetWriter) -> None:
    unique = UniqueIds(input_path, rename=rename_duplicates)
    tracker = _SequenceFrameTracker()
    batch = _ChunkBatch()
    unreported_rows: list[tuple] = []
    records_batch = []
    # Ids are checked for duplicates a few thousand records at a time (vectorised hashing), before any chunk of
    # those records is translated; the buffer is bounded by nucleotides too, so long contigs do not pile up.
    id_batch_size = 4096
    buffered_nucleotides = 0

    def flush_chunks() -> None:
        nonlocal batch
        _translate_and_write(batch, tracker, stats, frames_writer, unreported_rows)
        batch = _ChunkBatch()
        if unreported_rows:
            _write_unreported(unreported_writer, unreported_rows, stats)

    def process_records() -> None:
        ids = unique.check(records_batch)
        for record, sequence_id in zip(records_batch, ids):
            sequence = nucleotide_bytes(record, input_path)
            length = len(sequence)
            stats.sequences += 1
            stats.nucleotides += length
            if 0 < length <= chunk_length:
                # Reads: one chunk, no per-sequence bookkeeping needed (the common case, kept cheap).
                batch.add(sequence, sequence_id, record.index, 1, 0, length)
                stats.chunks += 1
            elif length == 0:
                # A placeholder chunk (number 0) keeps the unreported rows in input order.
                batch.add(b"", sequence_id, record.index, 0, 0, 0)
            else:
                bounds = chunk_bounds(length, chunk_length, chunking)
                tracker.expect(record.index, len(bounds))
                stats.chunks += len(bounds)
                for number, (start, end) in enumerate(bounds, start=1):
                    batch.add(sequence[start:end], sequence_id, record.index, number, start, end)
                    if batch.nucleotides >= batch_nucleotides:
                        flush_chunks()
            if batch.nucleotides >= batch_nucleotides:
                flush_chunks()
        records_batch.clear()

    for record in read_fasta(input_path):
        records_batch.append(record)
        buffered_nucleotides += len(record.sequence)
        if len(records_batch) >= id_batch_size or buffered_nucleotides >= batch_nucleotides:
            process_records()
            buffered_nucleotides = 0
    if records_batch:
        process_records()
    flush_chunks()
    stats.renamed_duplicates = unique.renamed


def _unreported_row(sequence_id: str, sequence_index: int, chunk_number: int | None, chunk_name: str | None,
                    start: int, end: int, reason: str) -> tuple:
    """One row in UNREPORTED_SCHEMA's column order."""
    return (sequence_id, sequence_index, chunk_name, chunk_number, start, end, reason)


def _write_unreported(writer: pq.ParquetWriter, rows: list[tuple], stats: PrepareStats) -> None:
    columns = list(zip(*rows))
    for reason in columns[-1]:
        stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
    writer.write_table(pa.Table.from_arrays(
        [pa.array(column, type=field.type) for column, field in zip(columns, UNREPORTED_SCHEMA)],
        schema=UNREPORTED_SCHEMA))
    stats.unreported_rows += len(rows)
    rows.clear()


def _translate_and_write(batch: _ChunkBatch, tracker: _SequenceFrameTracker, stats: PrepareStats,
                         writer: pq.ParquetWriter, unreported_rows: list[tuple]) -> None:
    if not len(batch):
        return
    kept = translate_chunks(batch.texts)
    chunk_names = [chunk_id(seq_id, number) for seq_id, number in zip(batch.sequence_id, batch.chunk_number)]
    for position, reason in enumerate(kept.no_frame_reason):
        sequence_index = batch.sequence_index[position]
        if batch.chunk_number[position] == 0:
            unreported_rows.append(_unreported_row(batch.sequence_id[position], sequence_index, None, None, 0, 0,
                                                   EMPTY_SEQUENCE))
        elif reason is not None:
            unreported_rows.append(_unreported_row(
                batch.sequence_id[position], sequence_index, batch.chunk_number[position], chunk_names[position],
                batch.start[position], batch.end[position], reason))
        if sequence_index in tracker.pending:
            if tracker.done(sequence_index, reason is None) is False:
                stats.sequences_without_frames += 1
        elif reason is not None:
            stats.sequences_without_frames += 1
    if not len(kept.protein):
        return
    rows = kept.chunk
    frame_names = np.array(FRAME_NAMES)[kept.frame_number]
    chunk_name_array = np.array(chunk_names, dtype=object)[rows]
    table = pa.table({
        "sequence_id": pa.array(np.array(batch.sequence_id, dtype=object)[rows], pa.string()),
        "sequence_index": pa.array(np.asarray(batch.sequence_index, dtype=np.int64)[rows]),
        "chunk_id": pa.array(chunk_name_array, pa.string()),
        "chunk_index": pa.array(np.asarray(batch.chunk_number, dtype=np.int32)[rows]),
        "frame_id": pa.array([name + frame for name, frame in zip(chunk_name_array.tolist(), frame_names.tolist())],
                             pa.string()),
        "strand": pa.array(np.where(kept.frame_number < 3, "+", "-").astype(object), pa.string()),
        "frame": pa.array((kept.frame_number % 3 + 1).astype(np.int8)),
        "chunk_start": pa.array(np.asarray(batch.start, dtype=np.int64)[rows]),
        "chunk_end": pa.array(np.asarray(batch.end, dtype=np.int64)[rows]),
        "protein": pa.array(kept.protein, pa.string()),
        "nucleotide": pa.array(kept.nucleotide, pa.string()),
    }, schema=FRAMES_SCHEMA)
    writer.write_table(table)
    stats.frames += table.num_rows


def read_table_metadata(path: str | Path) -> dict[str, str]:
    """The virnucpro.* key-value metadata of a table written by `prepare`."""
    raw = pq.read_schema(path).metadata or {}
    return {key.decode(): value.decode() for key, value in raw.items() if key.startswith(b"virnucpro.")}


def summary_json(stats: PrepareStats, **extra: Any) -> str:
    return json.dumps({**extra, **stats.as_dict()}, indent=2) + "\n"
