"""Six-frame translation with the reference VirNucPro semantics, vectorised over a batch of chunks.

Rules (docs/method.md has the worked details):

* the chunk is upper-cased; the reverse strand is its reverse complement, where only A, C, G, T are complemented
  (the reference leaves every other letter as it is, and the DNABERT-S input inherits that);
* frame Fn (n = 1..3) reads codons at positions n-1, n+2, ... of the forward strand while a whole codon fits; Rm the
  same on the reverse strand; a codon with any letter other than A, C, G, T is dropped (no ``X``), without shifting
  the frame;
* a frame is kept when its protein is non-empty and has no stop codon ``*``;
* the DNABERT-S nucleotide of a kept frame with p amino acids is ``strand[n-1 : n+3p]`` (3p+1 nt, fewer where the
  chunk ends first). With dropped codons, p counts translated codons only, exactly as the reference does.

Everything per batch is done with numpy on one concatenated byte buffer; Python only touches kept frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# NCBI translation table 1 in its usual compact form: codons enumerated with bases in T, C, A, G order.
_NCBI_BASES = "TCAG"
_NCBI_STANDARD_AMINO_ACIDS = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
STANDARD_CODE: dict[str, str] = {
    a + b + c: _NCBI_STANDARD_AMINO_ACIDS[16 * i + 4 * j + k]
    for i, a in enumerate(_NCBI_BASES)
    for j, b in enumerate(_NCBI_BASES)
    for k, c in enumerate(_NCBI_BASES)
}

STOP = ord("*")
FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")

# Base codes A=0, C=1, G=2, T=3, anything else 4 (ambiguous).
_BASE_CODE = np.full(256, 4, dtype=np.uint8)
for _code, _base in enumerate(b"ACGT"):
    _BASE_CODE[_base] = _code
# Amino acid (as an ASCII byte) for codon code 16*b1 + 4*b2 + b3.
_AMINO_BY_CODE = np.frombuffer(
    "".join(STANDARD_CODE[a + b + c] for a in "ACGT" for b in "ACGT" for c in "ACGT").encode("ascii"), dtype=np.uint8
)
_COMPLEMENT_ACGT_ONLY = bytes.maketrans(b"ACGT", b"TGCA")

# Why a chunk kept no frame.
NO_TRANSLATABLE_CODON = "no_translatable_codon"  # shorter than a codon, or every codon ambiguous, in all frames
STOP_CODON_IN_ALL_FRAMES = "stop_codon_in_all_frames"  # every frame that translates has a stop codon


def reverse_complement(sequence: str) -> str:
    """Reverse complement as the reference computes it: A/C/G/T complemented, any other letter kept as is."""
    return sequence.encode("ascii").translate(_COMPLEMENT_ACGT_ONLY)[::-1].decode("ascii")


@dataclass(frozen=True, slots=True)
class KeptFrames:
    """The kept frames of a batch of chunks, in chunk order then F1, F2, F3, R1, R2, R3."""

    chunk: np.ndarray  # int64, position of the chunk in the batch
    frame_number: np.ndarray  # int8, 0..5 = F1..F3, R1..R3
    protein: list[str]
    nucleotide: list[str]
    no_frame_reason: list[str | None]  # per chunk of the batch: None when it kept at least one frame


def translate_chunks(chunks: list[bytes]) -> KeptFrames:
    """Six-frame translate upper-case ASCII chunks and keep the stop-free, non-empty frames."""
    count = len(chunks)
    if count == 0:
        return KeptFrames(np.zeros(0, np.int64), np.zeros(0, np.int8), [], [], [])
    lengths = np.fromiter((len(chunk) for chunk in chunks), dtype=np.int64, count=count)
    forward = b"".join(chunks)
    total = len(forward)
    # The reverse complement of the whole batch holds every chunk's reverse complement, in reverse chunk order.
    strands = forward + forward.translate(_COMPLEMENT_ACGT_ONLY)[::-1]
    codes = _BASE_CODE[np.frombuffer(strands, dtype=np.uint8)]

    codon_ok = (codes[:-2] < 4) & (codes[1:-1] < 4) & (codes[2:] < 4)
    amino = _AMINO_BY_CODE[((codes[:-2] & 3) << 4) | ((codes[1:-1] & 3) << 2) | (codes[2:] & 3)]
    is_stop = codon_ok & (amino == STOP)

    forward_start = np.cumsum(lengths) - lengths
    reverse_start = 2 * total - forward_start - lengths
    strand_start = np.stack([forward_start, reverse_start], axis=1)  # [chunk, strand]
    offsets = np.arange(3, dtype=np.int64)
    # Segment = one frame of one chunk, ordered chunk-major then F1..F3, R1..R3.
    segment_start = (strand_start[:, :, None] + offsets).reshape(-1)
    codons = np.maximum(0, (lengths[:, None] - offsets) // 3)
    segment_codons = np.repeat(codons[:, None, :], 2, axis=1).reshape(-1)
    segment_strand_end = np.repeat(strand_start.reshape(-1), 3) + np.repeat(lengths, 6)

    # A frame's codons sit 3 apart, so per-frame counts are differences of cumulative sums taken separately over
    # each residue class mod 3: no per-codon gather is needed until a frame is known to be kept.
    protein_length = _strided_counts(codon_ok, segment_start, segment_codons)
    stop_count = _strided_counts(is_stop, segment_start, segment_codons)
    kept = (stop_count == 0) & (protein_length > 0)

    kept_segments = np.flatnonzero(kept)
    kept_length = protein_length[kept_segments]
    kept_start = segment_start[kept_segments]
    kept_codons = segment_codons[kept_segments]
    kept_first = np.cumsum(kept_codons) - kept_codons
    positions = np.repeat(kept_start, kept_codons) + 3 * (
        np.arange(int(kept_codons.sum()), dtype=np.int64) - np.repeat(kept_first, kept_codons))
    proteins_text = amino[positions][codon_ok[positions]].tobytes().decode("ascii")
    kept_offset = np.cumsum(kept_length) - kept_length
    kept_end = np.minimum(kept_start + 3 * kept_length + 1, segment_strand_end[kept_segments])
    strands_text = strands.decode("ascii")
    proteins: list[str] = []
    nucleotides: list[str] = []
    for begin, p, start, end in zip(kept_offset.tolist(), kept_length.tolist(), kept_start.tolist(),
                                    kept_end.tolist()):
        proteins.append(proteins_text[begin : begin + p])
        nucleotides.append(strands_text[start:end])

    kept_per_chunk = kept.reshape(count, 6).any(axis=1)
    translated_per_chunk = (protein_length.reshape(count, 6) > 0).any(axis=1)
    reasons: list[str | None] = [
        None if has_kept else (STOP_CODON_IN_ALL_FRAMES if translated else NO_TRANSLATABLE_CODON)
        for has_kept, translated in zip(kept_per_chunk.tolist(), translated_per_chunk.tolist())
    ]
    return KeptFrames(
        chunk=kept_segments // 6,
        frame_number=(kept_segments % 6).astype(np.int8),
        protein=proteins,
        nucleotide=nucleotides,
        no_frame_reason=reasons,
    )


def _strided_counts(flags: np.ndarray, first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """For each (first, count): how many of flags[first], flags[first+3], ..., flags[first+3(count-1)] are set."""
    # Frames with no codon may start up to 4 past the last codon position (empty chunks at the batch end).
    padded = np.zeros(-(-(len(flags) + 8) // 3) * 3, dtype=np.int32)
    padded[3 : 3 + len(flags)] = flags
    # cumulative[i + 3] = sum of flags[j] for j <= i and j == i (mod 3); the 3 leading zeros stand for "nothing".
    cumulative = np.cumsum(padded.reshape(-1, 3), axis=0, dtype=np.int32).reshape(-1)
    return cumulative[first + 3 * count] - cumulative[first]


def six_frames(sequence: str) -> list[tuple[str, str, str]]:
    """(frame name, protein, nucleotide) of the kept frames of one sequence; a convenience over translate_chunks."""
    kept = translate_chunks([sequence.upper().encode("ascii")])
    return [
        (FRAME_NAMES[int(number)], protein, nucleotide)
        for number, protein, nucleotide in zip(kept.frame_number, kept.protein, kept.nucleotide)
    ]
