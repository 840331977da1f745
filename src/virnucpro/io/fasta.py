"""Streaming FASTA reading (plain or gzip, any line endings) with errors that name the file, line and record.

Memory stays bounded by the longest record: records are yielded one at a time. Compression is detected from the
file's magic bytes, not its name, so `reads.fa` that is really gzip still works.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np
import polars as pl

from virnucpro.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"


class FastaFormatError(InputError):
    """A FASTA file that cannot be read as FASTA; the message names file, line and record."""

    def __init__(self, path: str | Path, problem: str, *, line: int | None = None, record: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.line = line
        self.record = record
        where = self.path if line is None else f"{self.path}:{line}"
        who = "" if record is None else f" record '{record}':"
        super().__init__(f"{where}:{who} {problem}")


@dataclass(frozen=True, slots=True)
class FastaRecord:
    id: str
    description: str
    sequence: str
    index: int  # 0-based position of the record in the file
    line: int  # 1-based line number of its header


def is_gzip(path: str | Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def open_text(path: str | Path) -> IO[str]:
    """Open a possibly gzip-compressed text file; universal newlines turn CRLF and CR into LF."""
    path = Path(path)
    if not path.exists():
        raise FastaFormatError(path, "file not found")
    if path.is_dir():
        raise FastaFormatError(path, "is a directory, expected a FASTA file")
    if is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="strict", newline=None)
    return open(path, encoding="utf-8", errors="strict", newline=None)


def read_fasta(path: str | Path, *, allow_empty_file: bool = False) -> Iterator[FastaRecord]:
    """Yield the records of a FASTA file in order.

    Raises FastaFormatError for: a missing file, a file with no records (unless `allow_empty_file`), text before the
    first header, a header with no id, binary content, and a truncated or corrupt gzip stream.
    """
    path = Path(path)
    header: str | None = None
    header_line = 0
    parts: list[str] = []
    index = 0
    line_no = 0
    try:
        with open_text(path) as handle:
            # Sequence lines are collected raw and cleaned once per record: per-line work dominates read time.
            for line_no, line in enumerate(handle, start=1):
                if line[:1] == ">":
                    if header is not None:
                        yield _make_record(path, header, parts, index, header_line)
                        index += 1
                    header, header_line, parts = line[1:], line_no, []
                    if not header.strip():
                        raise FastaFormatError(path, "header has no sequence id", line=line_no)
                elif header is not None:
                    parts.append(line)
                else:
                    stripped = line.strip()
                    if not stripped or stripped.startswith(";"):
                        continue  # blank or old-style comment lines before the first record
                    raise FastaFormatError(
                        path, f"not FASTA: expected a '>' header before sequence data, found {stripped[:30]!r}",
                        line=line_no,
                    )
            if header is not None:
                yield _make_record(path, header, parts, index, header_line)
                index += 1
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        last = f" (after record '{_header_id(header)}', line {line_no})" if header else ""
        raise FastaFormatError(path, f"truncated or corrupt gzip stream{last}: {err}", record=None) from err
    except UnicodeDecodeError as err:
        raise FastaFormatError(path, f"not a text FASTA file (undecodable byte at line {line_no + 1})",
                               record=_header_id(header) if header else None) from err
    if index == 0 and not allow_empty_file:
        raise FastaFormatError(path, "no FASTA records found (empty file?)")


def _header_id(header: str) -> str:
    return header.split(maxsplit=1)[0]


def _make_record(path: Path, header: str, parts: list[str], index: int, header_line: int) -> FastaRecord:
    fields = header.split(maxsplit=1)
    seq_id = fields[0]
    description = fields[1].rstrip() if len(fields) > 1 else ""
    sequence = "".join(parts)
    # Joined lines still hold their newlines (and maybe spaces or tabs): drop all whitespace at once.
    sequence = "".join(sequence.split()) if len(parts) > 1 or " " in sequence or "\t" in sequence \
        else sequence.rstrip("\n")
    if "\x00" in sequence:
        raise FastaFormatError(path, "binary data (NUL byte) in sequence", line=header_line, record=seq_id)
    return FastaRecord(id=seq_id, description=description, sequence=sequence, index=index, line=header_line)


def write_fasta(records: Iterator[tuple[str, str]] | list[tuple[str, str]], handle: IO[str], width: int = 0) -> int:
    """Write (id, sequence) pairs; `width` > 0 wraps sequence lines. Returns the number written."""
    count = 0
    for seq_id, seq in records:
        handle.write(f">{seq_id}\n")
        if width > 0:
            for start in range(0, len(seq), width):
                handle.write(seq[start : start + width] + "\n")
        else:
            handle.write(seq + "\n")
        count += 1
    return count


# IUPAC nucleotide codes, gaps and the common masking letter X. U is accepted (RNA); like every non-ACGT letter it
# makes its codon untranslatable.
NUCLEOTIDE_LETTERS = b"ACGTURYKMSWBDHVNX-."
# Letters that occur in proteins but are no nucleotide code: their presence means a protein FASTA was given.
PROTEIN_ONLY_LETTERS = frozenset("EFILPQJOZ*")


def nucleotide_bytes(record: FastaRecord, path: str | Path) -> bytes:
    """The record's sequence upper-cased as ASCII bytes; FastaFormatError if it is not a nucleotide sequence."""
    try:
        upper = record.sequence.upper().encode("ascii")
    except UnicodeEncodeError as err:
        bad = record.sequence[err.start]
        raise FastaFormatError(path, f"non-ASCII character {bad!r} at sequence position {err.start + 1}",
                               line=record.line, record=record.id) from err
    unexpected = upper.translate(None, NUCLEOTIDE_LETTERS)
    if unexpected:
        letters = sorted(set(unexpected.decode("ascii")))
        protein_letters = [letter for letter in letters if letter in PROTEIN_ONLY_LETTERS]
        if protein_letters:
            raise FastaFormatError(
                path, f"looks like a protein sequence (amino-acid letters {''.join(protein_letters)!r}); "
                      "expected nucleotide FASTA", line=record.line, record=record.id)
        position = next(i for i, byte in enumerate(upper) if bytes([byte]) in unexpected)
        raise FastaFormatError(path, f"invalid character {chr(upper[position])!r} at sequence position {position + 1}"
                               " (expected IUPAC nucleotide letters)", line=record.line, record=record.id)
    return upper


class DuplicateIdError(FastaFormatError):
    pass


class SeenIds:
    """Which ids a stream has seen, in 8 bytes per id (a 10 GB read file of 55M ids needs about 450 MB).

    Ids are hashed to uint64 and kept in sorted runs whose sizes grow geometrically (merged like an LSM tree), so
    adding a batch and testing membership are O(log n) per id. A hash match is only a candidate: callers confirm it
    on the id strings (see `UniqueIds`), so a 64-bit collision never becomes a false duplicate.
    """

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    @staticmethod
    def hashes(ids: list[str]) -> np.ndarray:
        return pl.Series(ids, dtype=pl.Utf8).hash(seed=0x5EED).to_numpy()

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        for run in self._runs:
            where = np.searchsorted(run, hashes)
            where[where == len(run)] = 0
            found |= run[where] == hashes
        return found

    def add(self, hashes: np.ndarray) -> None:
        run = np.sort(hashes)
        while self._runs and len(self._runs[-1]) <= len(run):
            run = np.concatenate([self._runs.pop(), run])
            run.sort()  # in place: a merge never holds more than the two runs plus their concatenation
        self._runs.append(run)


class UniqueIds:
    """Checks record ids for duplicates batch by batch; renames them deterministically when asked.

    With `rename=False` a duplicate raises DuplicateIdError naming both lines. With `rename=True` the k-th occurrence
    (k >= 2) of an id becomes `{id}_dup{k}`. A hash match is confirmed by comparing the id strings: inside the batch
    directly, against earlier batches by re-reading the file's headers up to the batch (only when a match happens).
    """

    def __init__(self, path: str | Path, *, rename: bool = False,
                 hasher: Callable[[list[str]], np.ndarray] = SeenIds.hashes):
        self.path = Path(path)
        self.rename = rename
        self._hasher = hasher
        self._seen = SeenIds()
        self._occurrences: dict[str, int] = {}  # only ids known to be duplicated
        self._first_line: dict[str, int] = {}
        self.renamed = 0

    def check(self, records: list[FastaRecord]) -> list[str]:
        """Return the ids to use for `records` (the same ids unless renamed)."""
        ids = [record.id for record in records]
        hashes = self._hasher(ids)
        earlier = self._seen.contains(hashes)
        candidates = {ids[i] for i in np.flatnonzero(earlier).tolist()} - self._occurrences.keys()
        if candidates:
            self._confirm_against_file(candidates, before_index=records[0].index)
        final: list[str] = []
        in_batch: dict[str, int] = {}
        for record in records:
            seq_id = record.id
            if seq_id in self._occurrences or seq_id in in_batch:
                first_line = self._first_line.get(seq_id, in_batch.get(seq_id))
                if not self.rename:
                    raise DuplicateIdError(self.path, f"duplicate sequence id (first seen at line {first_line}); "
                                           "use --rename-duplicates to rename repeats as ID_dup2, ID_dup3, ...",
                                           line=record.line, record=seq_id)
                count = self._occurrences.get(seq_id, 1) + 1
                self._occurrences[seq_id] = count
                self._first_line.setdefault(seq_id, first_line)
                seq_id = f"{seq_id}_dup{count}"
                self.renamed += 1
            else:
                in_batch[seq_id] = record.line
            final.append(seq_id)
        self._seen.add(hashes)
        return final

    def _confirm_against_file(self, candidates: set[str], before_index: int) -> None:
        for record in read_fasta(self.path):
            if record.index >= before_index:
                break
            if record.id in candidates and record.id not in self._occurrences:
                self._occurrences[record.id] = 1
                self._first_line[record.id] = record.line
