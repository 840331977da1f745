"""The pipeline, proven with the real Nextflow: test profile end to end, -resume, -stub-run, checkpoints that
outlive work directories, and bad input that stops the run before any task with one clear line."""

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
PREDICTION_TABLES = ("frame_predictions", "chunk_predictions", "sequence_predictions", "unreported")


def test_test_profile_end_to_end_then_resume_caches_every_task(nextflow, tmp_path):
    checkpoints = tmp_path / "ckpt"
    first = nextflow("-profile", "test", "--checkpoint_dir", str(checkpoints))
    assert first.returncode == 0, first.output

    demo_records = list(read_fasta(DEMO))
    summary = json.loads((first.outdir / "input" / "demo.input.json").read_text())
    assert summary["records"] == len(demo_records)

    frames = pl.read_parquet(first.outdir / "frames" / "demo.frames.parquet")
    unreported = pl.read_parquet(first.outdir / "frames" / "demo.frames.unreported.parquet")
    predictions = first.outdir / "predictions" / "demo"
    for table in PREDICTION_TABLES:
        assert (predictions / f"{table}.tsv").is_file() and (predictions / f"{table}.parquet").is_file()

    frame_predictions = pl.read_parquet(predictions / "frame_predictions.parquet")
    # every frame of the frame table scored exactly once, in frame-table order, with softmax scores
    assert frame_predictions["frame_id"].to_list() == frames["frame_id"].to_list()
    total = frame_predictions["score_virus"] + frame_predictions["score_others"]
    assert ((total - 1.0).abs() < 1e-5).all()

    sequences = pl.read_parquet(predictions / "sequence_predictions.parquet")
    # one verdict per input sequence, frames or not
    assert sequences["sequence_id"].to_list() == [r.id for r in demo_records]
    without_frames = set(r.id for r in demo_records) - set(frames["sequence_id"].to_list())
    assert without_frames and set(unreported["sequence_id"].to_list()) >= without_frames
    assert set(sequences.filter(pl.col("verdict") == "no_frames")["sequence_id"].to_list()) == without_frames
    assert "read_empty" in without_frames

    telemetry = [json.loads(p.read_text()) for p in sorted((first.outdir / "embedding").glob("*.telemetry.json"))]
    assert len(telemetry) == 2  # --shards 2 in the test profile
    assert sum(p["sequences"] for t in telemetry for p in t["passes"] if p["kind"] == "esm2") == frames.height

    report = (first.outdir / "report" / "demo.report.html").read_text()
    assert report.count("data:image/png;base64,") >= 4 and "Top virus sequences" in report
    assert (first.outdir / "pipeline_info" / "software_versions.yml").read_text().count('"VIRNUCPRO:EMBED_FRAMES":') == 1

    rows = first.trace_rows()
    assert {r["status"] for r in rows} == {"COMPLETED"}
    assert sorted(r["name"].split(" ")[0] for r in rows) == sorted(
        ["VIRNUCPRO:MAKE_TINY_MODELS", "VIRNUCPRO:VALIDATE_INPUT", "VIRNUCPRO:PREPARE_FRAMES",
         "VIRNUCPRO:EMBED_FRAMES", "VIRNUCPRO:EMBED_FRAMES", "VIRNUCPRO:AGGREGATE_FEATURES", "VIRNUCPRO:PREDICT",
         "VIRNUCPRO:RUN_REPORT"])

    second = nextflow("-profile", "test", "--checkpoint_dir", str(checkpoints), "-resume")
    assert second.returncode == 0, second.output
    resumed = second.trace_rows()
    assert len(resumed) == len(rows)
    assert {r["status"] for r in resumed} == {"CACHED"}, resumed

    # A successful shard removes its checkpoint (the task output holds the rows) ...
    assert not any(checkpoints.rglob("*.bin"))
    # ... unless asked to keep it. Then work directories gone (a retry lands in a fresh work dir, or a failed
    # node's scratch is lost): the embedding tasks rerun, find the rows in the checkpoint directory outside the
    # work dir, embed nothing again, and the results are identical.
    keep = tmp_path / "keep.config"
    keep.write_text("process { withName: 'EMBED_FRAMES' { ext.args = '--devices cpu --dtype fp32 "
                    "--token-budget 2048 --workers 0 --checkpoint-every 16 --keep-checkpoint' } }\n")
    kept = nextflow("-profile", "test", "-c", str(keep), "--checkpoint_dir", str(checkpoints), outdir="results_kept")
    assert kept.returncode == 0, kept.output
    assert any(checkpoints.rglob("*.bin"))
    shutil.rmtree(tmp_path / "work")
    third = nextflow("-profile", "test", "-c", str(keep), "--checkpoint_dir", str(checkpoints),
                     outdir="results_again")
    assert third.returncode == 0, third.output
    rerun = [json.loads(p.read_text()) for p in sorted((third.outdir / "embedding").glob("*.telemetry.json"))]
    assert sum(p["tokens"] for t in rerun for p in t["passes"]) == 0
    again = pl.read_parquet(third.outdir / "predictions" / "demo" / "frame_predictions.parquet")
    assert again.equals(frame_predictions)


def test_stub_run_creates_the_same_file_names(nextflow):
    run = nextflow("-profile", "test", "-stub-run", outdir="stub_results")
    assert run.returncode == 0, run.output
    assert (run.outdir / "predictions" / "demo" / "sequence_predictions.tsv").exists()
    assert (run.outdir / "report" / "demo.report.html").exists()
    assert (run.outdir / "frames" / "demo.frames.parquet").exists()


def test_gzip_input_chunk_length_500(nextflow, tmp_path):
    gz = tmp_path / "reads.fa.gz"
    with open(DEMO, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    run = nextflow("-profile", "test", "--input", str(gz), "--shards", "1", "--chunk_length", "500")
    assert run.returncode == 0, run.output
    frames = pl.read_parquet(run.outdir / "frames" / "reads.frames.parquet")
    contig = frames.filter(pl.col("sequence_id") == "contig_1200")
    assert contig["chunk_id"].unique().sort().to_list() == [f"contig_1200_chunk_{k}" for k in (1, 2, 3)]
    sequences = pl.read_csv(run.outdir / "predictions" / "reads" / "sequence_predictions.tsv", separator="\t")
    assert sequences.height == len(list(read_fasta(DEMO)))


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
    run = nextflow("-profile", "test", "--shards", "zero", "--chunk_lenght", "300", "--chunk_length", "400")
    assert run.returncode != 0
    line = _single_error_line(run.output)
    assert "--shards must be an integer" in line and "unknown parameter --chunk_lenght" in line
    assert "--chunk_length must be one of 300, 500" in line


def test_real_run_without_models_is_refused(nextflow):
    run = nextflow("--input", str(DEMO))
    assert run.returncode != 0
    line = _single_error_line(run.output)
    assert "--esm_model" in line and "--dnabert_model" in line and "--classifier" in line
