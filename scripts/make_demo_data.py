"""Writes the bundled demo FASTA (assets/demo/demo.fa): deterministic synthetic sequences.

Most are "coding": built from random sense codons, so at least one frame of every chunk is stop-free, like the
open reading frames of real viral and microbial genomes; a few are plain random DNA, which almost always has a stop
codon in all six frames of a 300-nt chunk and so shows up in the unreported table. Lengths exercise the chunking
(150-nt reads; 301, 700, 1000, 1200-nt contigs); lowercase, N and IUPAC codes and an empty record are included.
"""

import random
from pathlib import Path

rng = random.Random(20261129)
STOPS = {"TAA", "TAG", "TGA"}
SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in STOPS]


def coding(length: int) -> str:
    seq = "".join(rng.choice(SENSE) for _ in range(length // 3 + 1))
    return seq[:length]


def random_dna(length: int) -> str:
    return "".join(rng.choice("ACGT") for _ in range(length))


records = [(f"read_{i:03d}", coding(150)) for i in range(1, 15)]
records += [(f"noise_{i:03d}", random_dna(150)) for i in range(1, 4)]
records += [("contig_301", coding(301)), ("contig_700", coding(700)), ("contig_1000", coding(1000)),
            ("contig_1200", coding(1200)), ("contig_noise_900", random_dna(900))]
records.append(("read_lowercase", coding(150).lower()))
with_n = list(coding(150))
for pos in (10, 11, 12, 80, 81):
    with_n[pos] = "N"
records.append(("read_with_N", "".join(with_n)))
records.append(("read_iupac", coding(69) + "RYK" + coding(78)))
records.append(("read_empty", ""))

out = Path(__file__).resolve().parent.parent / "assets" / "demo" / "demo.fa"
out.parent.mkdir(parents=True, exist_ok=True)
with open(out, "w") as handle:
    for seq_id, seq in records:
        handle.write(f">{seq_id} synthetic demo sequence\n")
        for start in range(0, len(seq), 70):
            handle.write(seq[start : start + 70] + "\n")
print(f"wrote {len(records)} records to {out}")
