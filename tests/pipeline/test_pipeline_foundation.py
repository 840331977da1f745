"""The pipeline's plumbing, proven with the real Nextflow: test profile, -resume, -stub-run, bad input."""

from __future__ import annotations

import gzip
import json
import shutil

import polars as pl
import pytest

from tests.conftest import REPO
from virnucpro.io.fasta import read_fasta

pytestmark = pytest.mark.pipeline

DEMO = REPO / "assets" / "demo" / "demo.fa"


def test_test_profile_publishes_counts_then_resume_caches_every_task(nextflow):
    first = nextflow("-profile", "test")
    assert first.returncode == 0, first.output

    demo_records = list(read_fasta(DEMO))
    summary = json.loads((first.outdir / "input" / "demo.input.json").read_text())
    assert summary["records"] == len(demo_records)
    assert summary["bases"] == sum(len(r.sequence) for r in demo_records)

    counts = pl.read_csv(first.outdir / "counts" / "demo.shard_counts.tsv", separator="\t")
    shards = counts.filter(pl.col("shard") != "total")
    assert shards["shard"].to_list() == ["demo.shard-000.fa", "demo.shard-001.fa"]
    # stride sharding: record k goes to shard k mod 2
    assert shards["records"].to_list() == [len(demo_records[0::2]), len(demo_records[1::2])]
    assert shards["bases"].to_list() == [sum(len(r.sequence) for r in demo_records[i::2]) for i in (0, 1)]
    assert counts.filter(pl.col("shard") == "total")["records"].item() == len(demo_records)

    versions = (first.outdir / "pipeline_info" / "software_versions.yml").read_text()
    assert versions.count('"VIRNUCPRO:COUNT_RECORDS":') == 1
    assert "published files under" in first.output and "counts/demo.shard_counts.tsv" in first.output

    rows = first.trace_rows()
    assert {r["status"] for r in rows} == {"COMPLETED"}
    assert len(rows) == 5  # validate, split, 2 x count, gather

    second = nextflow("-profile", "test", "-resume")
    assert second.returncode == 0, second.output
    resumed = second.trace_rows()
    assert len(resumed) == len(rows)
    assert {r["status"] for r in resumed} == {"CACHED"}, resumed


def test_stub_run_creates_the_same_file_names(nextflow):
    run = nextflow("-profile", "test", "-stub-run", outdir="stub_results")
    assert run.returncode == 0, run.output
    assert (run.outdir / "counts" / "demo.shard_counts.tsv").exists()
    assert (run.outdir / "input" / "demo.input.json").exists()


def test_gzip_input_with_more_shards(nextflow, tmp_path):
    gz = tmp_path / "reads.fa.gz"
    with open(DEMO, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    run = nextflow("-profile", "test", "--input", str(gz), "--shards", "3")
    assert run.returncode == 0, run.output
    counts = pl.read_csv(run.outdir / "counts" / "reads.shard_counts.tsv", separator="\t")
    assert counts.filter(pl.col("shard") == "total")["records"].item() == len(list(read_fasta(DEMO)))
    assert counts.height == 4


def _single_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith(("N E X T F L O W", "Launching"))]
    assert "groovy" not in output.lower() and "exception" not in output.lower(), output
    assert len(lines) == 1, output
    return lines[0]


def test_missing_input_fails_fast_with_one_line(nextflow):
    run = nextflow("--input", "missing.fa")
    assert run.returncode != 0
    line = _single_error_line(run.output)
    assert "missing.fa" in line and "not found" in line


def test_non_fasta_input_fails_fast_with_one_line(nextflow, tmp_path):
    (tmp_path / "table.csv").write_text("id,value\n1,2\n")
    run = nextflow("--input", "table.csv")
    assert run.returncode != 0
    line = _single_error_line(run.output)
    assert "table.csv" in line and "not FASTA" in line


def test_empty_and_corrupt_gzip_inputs_fail_fast(nextflow, tmp_path):
    (tmp_path / "empty.fa").write_text("")
    run = nextflow("--input", "empty.fa")
    assert run.returncode != 0 and "empty.fa" in _single_error_line(run.output)
    (tmp_path / "bad.fa.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    run = nextflow("--input", "bad.fa.gz")
    assert run.returncode != 0 and "bad.fa.gz" in _single_error_line(run.output)


def test_unknown_or_mistyped_parameters_are_refused(nextflow):
    run = nextflow("-profile", "test", "--shards", "zero", "--chunk_lenght", "300")
    assert run.returncode != 0
    line = _single_error_line(run.output)
    assert "--shards must be an integer" in line and "unknown parameter --chunk_lenght" in line
