"""Writes the bundled demo FASTA (assets/demo/demo.fa): deterministic synthetic reads and contigs that exercise
chunking (150-nt reads; 301, 700, 1000, 1200-nt contigs), lowercase input and ambiguous bases."""

import random
from pathlib import Path

rng = random.Random(20261129)


def dna(length: int) -> str:
    return "".join(rng.choice("ACGT") for _ in range(length))


records = [(f"read_{i:03d}", dna(150)) for i in range(1, 17)]
records += [("contig_301", dna(301)), ("contig_700", dna(700)), ("contig_1000", dna(1000)), ("contig_1200", dna(1200))]
records.append(("read_lowercase", dna(150).lower()))
with_n = list(dna(150))
for pos in (10, 11, 12, 80, 81):
    with_n[pos] = "N"
records.append(("read_with_N", "".join(with_n)))
records.append(("read_iupac", dna(70) + "RYKM" + dna(76)))

out = Path(__file__).resolve().parent.parent / "assets" / "demo" / "demo.fa"
out.parent.mkdir(parents=True, exist_ok=True)
with open(out, "w") as handle:
    for seq_id, seq in records:
        handle.write(f">{seq_id} synthetic demo sequence\n")
        for start in range(0, len(seq), 70):
            handle.write(seq[start : start + 70] + "\n")
print(f"wrote {len(records)} records to {out}")
