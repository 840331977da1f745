"""Shared test fixtures: paths, and a runner for the real Nextflow (installed by scripts/bootstrap)."""

from __future__ import annotations

import csv
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NEXTFLOW = REPO / "scripts" / "nextflow"


@dataclass
class NextflowRun:
    returncode: int
    output: str
    outdir: Path
    trace: Path

    def trace_rows(self) -> list[dict[str, str]]:
        with open(self.trace) as handle:
            return list(csv.DictReader(handle, delimiter="\t"))


@pytest.fixture
def nextflow(tmp_path):
    """Run `nextflow run <repo>` inside tmp_path (its own work dir and .nextflow cache), with a trace file."""
    runs = {"n": 0}

    def run(*args: str, outdir: str = "results", timeout: int = 900) -> NextflowRun:
        runs["n"] += 1
        trace = tmp_path / f"trace-{runs['n']}.tsv"
        cmd = [str(NEXTFLOW), "run", str(REPO), "--outdir", outdir, "-with-trace", str(trace), *args]
        env = dict(os.environ, NXF_ANSI_LOG="false")
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
        return NextflowRun(proc.returncode, proc.stdout + proc.stderr, tmp_path / outdir, trace)

    return run
