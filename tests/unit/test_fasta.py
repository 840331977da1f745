"""FASTA reading, nucleotide validation and duplicate ids: every bad case is one line naming file and record."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from virnucpro.io.fasta import (
    DuplicateIdError,
    FastaFormatError,
    SeenIds,
    UniqueIds,
    nucleotide_bytes,
    read_fasta,
)


def write(path, text: str | bytes):
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_plain_gzip_and_crlf_give_the_same_records(tmp_path):
    text = ">r1 first read\nACGT\nacgt\n\n>r2\nNNRY\n>empty\n>r3\tx\nAC GT\n"
    plain = write(tmp_path / "a.fa", text)
    windows = write(tmp_path / "b.fa", text.replace("\n", "\r\n"))
    zipped = tmp_path / "c.fa.gz"
    zipped.write_bytes(gzip.compress(text.encode()))
    expected = [("r1", "first read", "ACGTacgt"), ("r2", "", "NNRY"), ("empty", "", ""), ("r3", "x", "ACGT")]
    for path in (plain, windows, zipped):
        assert [(r.id, r.description, r.sequence) for r in read_fasta(path)] == expected
    assert [r.line for r in read_fasta(plain)] == [1, 5, 7, 8]


def test_gzip_is_detected_by_content_not_name(tmp_path):
    path = tmp_path / "reads.fa"
    path.write_bytes(gzip.compress(b">x\nACGT\n"))
    assert [r.sequence for r in read_fasta(path)] == ["ACGT"]


def test_truncated_gzip_names_the_file_and_last_record(tmp_path):
    body = "".join(f">read_{i}\n{'ACGT' * 40}\n" for i in range(2000)).encode()
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(gzip.compress(body)[:-200])
    with pytest.raises(FastaFormatError, match=r"cut\.fa\.gz.*truncated or corrupt gzip.*read_"):
        list(read_fasta(path))


def test_text_before_first_header(tmp_path):
    path = write(tmp_path / "x.fa", "ACGT\n>r\nAC\n")
    with pytest.raises(FastaFormatError, match=r"x\.fa:1: not FASTA"):
        list(read_fasta(path))


def test_empty_file_and_missing_file(tmp_path):
    with pytest.raises(FastaFormatError, match="no FASTA records"):
        list(read_fasta(write(tmp_path / "e.fa", "")))
    with pytest.raises(FastaFormatError, match="file not found"):
        list(read_fasta(tmp_path / "missing.fa"))


def test_header_without_id(tmp_path):
    with pytest.raises(FastaFormatError, match=r"h\.fa:3: header has no sequence id"):
        list(read_fasta(write(tmp_path / "h.fa", ">a\nAC\n>  \nAC\n")))


def test_one_megabase_contig_is_read_whole(tmp_path):
    rng = np.random.default_rng(0)
    contig = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, 1_000_000)].tobytes().decode()
    wrapped = "\n".join(contig[i : i + 80] for i in range(0, len(contig), 80))
    path = write(tmp_path / "big.fa", f">contig\n{wrapped}\n")
    (record,) = read_fasta(path)
    assert record.sequence == contig


def record_of(path, text):
    write(path, text)
    return next(iter(read_fasta(path)))


def test_nucleotide_bytes_upper_cases_and_keeps_iupac(tmp_path):
    path = tmp_path / "n.fa"
    assert nucleotide_bytes(record_of(path, ">r\nacgtNRYkm-\n"), path) == b"ACGTNRYKM-"


def test_protein_fasta_is_detected(tmp_path):
    path = tmp_path / "p.fa"
    record = record_of(path, ">sp|P69905|HBA_HUMAN\nMVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF\n")
    with pytest.raises(FastaFormatError, match=r"p\.fa:1: record 'sp\|P69905\|HBA_HUMAN': looks like a protein"):
        nucleotide_bytes(record, path)


def test_invalid_character_is_named_with_position(tmp_path):
    path = tmp_path / "bad.fa"
    with pytest.raises(FastaFormatError, match=r"record 'r': invalid character '7' at sequence position 3"):
        nucleotide_bytes(record_of(path, ">r\nAC7GT\n"), path)


def test_seen_ids_membership_across_runs():
    seen = SeenIds()
    for start in range(0, 5000, 700):
        batch = [f"id{i}" for i in range(start, start + 700)]
        assert not seen.contains(SeenIds.hashes(batch)).any()
        seen.add(SeenIds.hashes(batch))
    assert seen.contains(SeenIds.hashes(["id0", "id4899", "id123"])).all()
    assert not seen.contains(SeenIds.hashes(["id5600", "nope"])).any()


def records(path):
    return list(read_fasta(path))


def test_duplicate_id_is_an_error_naming_both_lines(tmp_path):
    path = write(tmp_path / "d.fa", ">a\nAC\n>b\nAC\n>a\nGG\n")
    recs = records(path)
    with pytest.raises(DuplicateIdError, match=r"d\.fa:5: record 'a': duplicate sequence id \(first seen at line 1\)"):
        UniqueIds(path).check(recs)


def test_duplicates_across_batches_are_found_and_renamed_deterministically(tmp_path):
    path = write(tmp_path / "d.fa", ">a\nAC\n>b\nAC\n>a\nGG\n>c\nA\n>a\nT\n>b\nC\n")
    recs = records(path)
    with pytest.raises(DuplicateIdError, match="first seen at line 1"):
        checker = UniqueIds(path)
        checker.check(recs[:2])
        checker.check(recs[2:])
    renamer = UniqueIds(path, rename=True)
    ids = renamer.check(recs[:2]) + renamer.check(recs[2:4]) + renamer.check(recs[4:])
    assert ids == ["a", "b", "a_dup2", "c", "a_dup3", "b_dup2"]
    assert renamer.renamed == 3


def test_hash_matches_are_confirmed_on_the_id_strings(tmp_path):
    """With a hash that collides for every id, distinct ids must still pass and real duplicates still fail."""
    path = write(tmp_path / "c.fa", ">a\nAC\n>b\nAC\n>c\nGG\n>b\nTT\n")
    recs = records(path)

    def colliding(ids):
        return np.zeros(len(ids), dtype=np.uint64)

    checker = UniqueIds(path, hasher=colliding)
    assert checker.check(recs[:1]) == ["a"]
    assert checker.check(recs[1:3]) == ["b", "c"]
    with pytest.raises(DuplicateIdError, match=r"c\.fa:7: record 'b'.*first seen at line 3"):
        checker.check(recs[3:])
    renamer = UniqueIds(path, rename=True, hasher=colliding)
    assert [renamer.check([r])[0] for r in recs] == ["a", "b", "c", "b_dup2"]
