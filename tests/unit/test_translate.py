"""Six-frame translation against an obviously-correct per-codon implementation and Biopython's standard table."""

from __future__ import annotations

import pytest
from Bio.Data.CodonTable import standard_dna_table
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.preprocess.translate import (
    NO_TRANSLATABLE_CODON,
    STANDARD_CODE,
    STOP_CODON_IN_ALL_FRAMES,
    reverse_complement,
    six_frames,
    translate_chunks,
)

BIOPYTHON_CODE = {**standard_dna_table.forward_table, **{codon: "*" for codon in standard_dna_table.stop_codons}}


def slow_reverse_complement(sequence: str) -> str:
    pairs = {"A": "T", "C": "G", "G": "C", "T": "A"}
    return "".join(pairs.get(base, base) for base in reversed(sequence))


def slow_frames(sequence: str) -> list[tuple[str, str, str]]:
    """Kept frames by the SPEC, one codon at a time."""
    sequence = sequence.upper()
    kept = []
    for name, strand in (("F", sequence), ("R", slow_reverse_complement(sequence))):
        for n in (1, 2, 3):
            protein = ""
            position = n - 1
            while position + 3 <= len(strand):
                codon = strand[position : position + 3]
                if set(codon) <= set("ACGT"):
                    protein += BIOPYTHON_CODE[codon]
                position += 3
            if protein and "*" not in protein:
                kept.append((f"{name}{n}", protein, strand[n - 1 : n + 3 * len(protein)]))
    return kept


def test_codon_table_is_the_standard_code():
    assert STANDARD_CODE == BIOPYTHON_CODE
    assert len(STANDARD_CODE) == 64


def test_worked_example_with_a_stop_in_frame_one():
    sequence = "ATGGCCATTGTAATGGGCCGCTGAAAGGGTGCCCGATAG"  # F1 = MAIVMGR*KGAR*
    frames = dict((name, (protein, nucleotide)) for name, protein, nucleotide in six_frames(sequence))
    assert "F1" not in frames
    assert frames["F3"][0] == "GHCNGPLKGCPI"
    # 3p+1 nucleotides starting at offset n-1: 12 amino acids -> 37 nt from position 2 (clipped at the end: 37).
    assert frames["F3"][1] == sequence[2 : 3 + 36]
    assert frames["R1"][1] == reverse_complement(sequence)[0 : 1 + 3 * 13]


def test_ambiguous_codons_are_dropped_without_shifting_the_frame():
    frames = {name: (protein, nucleotide) for name, protein, nucleotide in six_frames("atgNNNaaaccc")}
    assert frames["F1"] == ("MKP", "ATGNNNAAAC")  # p = 3 translated codons, slice n-1 : n+3p = 0:10
    assert frames["F2"] == ("N", "TGNN")  # only AAC translates in frame 2


def test_reverse_complement_keeps_non_acgt_letters_like_the_reference():
    assert reverse_complement("ACGTNRY") == "YRNACGT"


def test_no_frame_reasons():
    kept = translate_chunks([b"AC", b"NNNNNNNN", b"TAATAATAATAA", b"ATGAAA"])
    assert kept.no_frame_reason[0] == NO_TRANSLATABLE_CODON
    assert kept.no_frame_reason[1] == NO_TRANSLATABLE_CODON
    assert kept.no_frame_reason[3] is None
    assert set(kept.chunk.tolist()) <= {2, 3}


def test_stop_in_every_frame_is_reported():
    # Every frame of both strands meets a stop codon.
    sequence = b"ACTCATTTAACTAATTAA"
    assert slow_frames(sequence.decode()) == []
    assert translate_chunks([sequence]).no_frame_reason == [STOP_CODON_IN_ALL_FRAMES]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ACGTacgtNRY", min_size=0, max_size=80))
def test_single_sequence_matches_the_slow_implementation(sequence):
    assert six_frames(sequence) == slow_frames(sequence)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="ACGTACGTACGTN", min_size=0, max_size=60), min_size=1, max_size=12))
def test_batch_matches_per_sequence_results_in_order(sequences):
    kept = translate_chunks([sequence.encode() for sequence in sequences])
    expected = [(index, name, protein, nucleotide)
                for index, sequence in enumerate(sequences)
                for name, protein, nucleotide in slow_frames(sequence)]
    names = ["F1", "F2", "F3", "R1", "R2", "R3"]
    got = [(int(chunk), names[int(number)], protein, nucleotide)
           for chunk, number, protein, nucleotide in zip(kept.chunk, kept.frame_number, kept.protein,
                                                           kept.nucleotide)]
    assert got == expected
    for index, reason in enumerate(kept.no_frame_reason):
        assert (reason is None) == any(row[0] == index for row in expected)


@pytest.mark.parametrize("length", [3, 4, 5, 6, 7])
def test_nucleotide_slice_is_3p_plus_1_when_available(length):
    sequence = "GCT" * 3
    sequence = (sequence * 3)[:length]
    frames = {name: (protein, nucleotide) for name, protein, nucleotide in six_frames(sequence)}
    protein, nucleotide = frames["F1"]
    assert len(nucleotide) == min(3 * len(protein) + 1, length)
