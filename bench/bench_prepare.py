"""Measure `virnucpro prepare` on N random reads (default 1M x 150 nt, the archive's benchmark shape).

Writes bench/results/prepare-cpu.json: records/s, nucleotides/s, frames, peak RSS. Run:

    .venv/bin/python bench/bench_prepare.py --reads 1000000 --length 150 --chunk-length 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_reads(path: Path, reads: int, length: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ACGT", dtype=np.uint8)
    # Small uint8 blocks: the child's peak RSS counts this process's memory at fork time, so keep it small.
    block = max(1, 4_000_000 // length)
    with open(path, "wb") as handle:
        for first in range(0, reads, block):
            count = min(block, reads - first)
            bases = alphabet[rng.integers(0, 4, size=(count, length), dtype=np.uint8)]
            lines = bytearray()
            for offset, row in enumerate(bases):
                lines += b">read_%d\n" % (first + offset) + row.tobytes() + b"\n"
            handle.write(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=1_000_000)
    parser.add_argument("--length", type=int, default=150)
    parser.add_argument("--chunk-length", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--result", type=Path, default=Path(__file__).parent / "results" / "prepare-cpu.json")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    fasta = workdir / f"reads-{args.reads}x{args.length}.fa"
    if not fasta.exists():
        write_reads(fasta, args.reads, args.length, args.seed)
    output = workdir / "frames.parquet"
    virnucpro = Path(sys.executable).with_name("virnucpro")
    command = [str(virnucpro), "prepare", "--input", str(fasta), "--output", str(output),
               "--chunk-length", str(args.chunk_length), "--summary", str(workdir / "summary.json")]
    load_before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_rss_mb = usage.ru_maxrss / 1024
    # The development machines are shared: CPU seconds say more about the code than wall seconds do.
    cpu_seconds = usage.ru_utime + usage.ru_stime
    summary = json.loads((workdir / "summary.json").read_text())
    result = {
        "benchmark": "prepare-cpu",
        "command": " ".join(["virnucpro", *command[1:]]),
        "reads": args.reads, "read_length": args.length, "chunk_length": args.chunk_length,
        "wall_seconds": round(wall, 2),
        "records_per_second": round(args.reads / wall, 1),
        "nucleotides_per_second": round(args.reads * args.length / wall, 1),
        "cpu_seconds": round(cpu_seconds, 2),
        "records_per_cpu_second": round(args.reads / cpu_seconds, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "frames": summary["frames"], "unreported_rows": summary["unreported_rows"],
        "input_bytes": fasta.stat().st_size, "frames_parquet_bytes": output.stat().st_size,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
