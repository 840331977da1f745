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
from typing import IO, Iterator

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
    last_id: str | None = None
    try:
        with open_text(path) as handle:
            for line_no, raw in enumerate(handle, start=1):
                line = raw.rstrip("\n")
                if line.startswith(">"):
                    if header is not None:
                        yield _make_record(path, header, parts, index, header_line)
                        index += 1
                    header, header_line, parts = line[1:], line_no, []
                    last_id = header.split(maxsplit=1)[0] if header.strip() else None
                    if last_id is None:
                        raise FastaFormatError(path, "header has no sequence id", line=line_no)
                    continue
                stripped = line.strip()
                if not stripped:
                    continue
                if header is None:
                    if stripped.startswith(";"):
                        continue  # old-style comment lines before the first record
                    raise FastaFormatError(
                        path, f"not FASTA: expected a '>' header before sequence data, found {stripped[:30]!r}",
                        line=line_no,
                    )
                if "\x00" in stripped:
                    raise FastaFormatError(path, "binary data (NUL byte) in sequence", line=line_no, record=last_id)
                parts.append(stripped.replace(" ", "").replace("\t", ""))
            if header is not None:
                yield _make_record(path, header, parts, index, header_line)
                index += 1
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        after = f" (after record '{last_id}', line {line_no})" if last_id else ""
        raise FastaFormatError(path, f"truncated or corrupt gzip stream{after}: {err}", record=None) from err
    except UnicodeDecodeError as err:
        raise FastaFormatError(path, f"not a text FASTA file (undecodable byte at line {line_no + 1})",
                               record=last_id) from err
    if index == 0 and not allow_empty_file:
        raise FastaFormatError(path, "no FASTA records found (empty file?)")


def _make_record(path: Path, header: str, parts: list[str], index: int, header_line: int) -> FastaRecord:
    fields = header.strip().split(maxsplit=1)
    seq_id = fields[0]
    description = fields[1] if len(fields) > 1 else ""
    return FastaRecord(id=seq_id, description=description, sequence="".join(parts), index=index, line=header_line)


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
