"""`virnucpro predict`: frame scores, the reference chunk consensus, sequence verdicts, and its refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from tests.unit.test_classifier import numpy_reference, raw_state, save_original_classifier
from virnucpro.cli import app
from virnucpro.io.features import write_features
from virnucpro.preprocess.prepare import prepare

VIRNUCPRO = Path(sys.executable).with_name("virnucpro")
DNABERT_DIM, ESM_DIM = 8, 16
SENSE_CODONS = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in ("TAA", "TAG", "TGA")]


def orf(rng, length):
    return "".join(rng.choice(SENSE_CODONS, size=length // 3 + 1))[:length]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A prepared input (reads, a 3-chunk contig, an empty and a frameless sequence) with random features."""
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(5)
    sequences = [("read_a", orf(rng, 150)), ("contig", orf(rng, 700)), ("empty", ""),
                 ("stops", "ACTCATTTAACTAATTAA"), ("read_b", orf(rng, 90))]
    fasta = root / "in.fa"
    fasta.write_text("".join(f">{name}\n{seq}\n" for name, seq in sequences))
    frames = root / "frames.parquet"
    prepare(fasta, frames, chunk_length=300)
    frame_ids = pl.read_parquet(frames)["frame_id"].to_list()
    dnabert = rng.normal(size=(len(frame_ids), DNABERT_DIM)).astype(np.float32)
    esm = rng.normal(size=(len(frame_ids), ESM_DIM)).astype(np.float32)
    features = write_features(root / "features", frame_ids, dnabert, esm)
    classifier = save_original_classifier(root / "300_model.pth", input_dim=DNABERT_DIM + ESM_DIM, seed=3)
    return {"root": root, "frames": frames, "features": features, "classifier": classifier,
            "frame_ids": frame_ids, "x": np.concatenate([dnabert, esm], axis=1).astype(np.float64)}


def invoke(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


def test_tables_follow_the_reference_rules(run, tmp_path):
    out = tmp_path / "out"
    result = invoke("--features", run["features"], "--classifier", run["classifier"], "--chunk-length", 300,
                    "--frames", run["frames"], "--output", out, "--batch-size", 7)
    assert result.exit_code == 0, result.output
    frames = pl.read_parquet(out / "frame_predictions.parquet")
    assert frames.columns[:6] == ["sequence_id", "frame_id", "chunk_id", "prediction", "score_others", "score_virus"]
    assert frames["frame_id"].to_list() == run["frame_ids"]
    expected = numpy_reference(raw_state(run["classifier"]), run["x"])
    np.testing.assert_allclose(frames.select("score_others", "score_virus").to_numpy(), expected, atol=2e-6)
    assert frames["prediction"].to_list() == ["virus" if v > o else "others" for o, v in expected]
    assert pl.read_csv(out / "frame_predictions.tsv", separator="\t")["frame_id"].to_list() == run["frame_ids"]

    chunks = pl.read_parquet(out / "chunk_predictions.parquet")
    for chunk in chunks.iter_rows(named=True):
        mine = frames.filter(pl.col("chunk_id") == chunk["chunk_id"])
        consensus = mine["score_virus"].max() >= mine["score_others"].max()
        assert chunk["prediction"] == ("virus" if consensus else "others")
        assert chunk["n_frames"] == mine.height
    assert chunks.filter(pl.col("sequence_id") == "contig")["chunk_index"].to_list() == [1, 2, 3]

    sequences = pl.read_parquet(out / "sequence_predictions.parquet")
    assert sequences["sequence_id"].to_list() == ["read_a", "contig", "empty", "stops", "read_b"]
    by_id = {row["sequence_id"]: row for row in sequences.iter_rows(named=True)}
    contig_chunks = chunks.filter(pl.col("sequence_id") == "contig")
    n_virus = (contig_chunks["prediction"] == "virus").sum()
    assert by_id["contig"]["n_chunks"] == 3 and by_id["contig"]["n_virus_chunks"] == n_virus
    assert by_id["contig"]["verdict"] == ("virus" if n_virus >= 1.5 else "others")
    contig_frames = frames.filter(pl.col("sequence_id") == "contig")
    assert by_id["contig"]["max_score_virus"] == pytest.approx(contig_frames["score_virus"].max())
    assert by_id["contig"]["mean_score_virus"] == pytest.approx(contig_frames["score_virus"].mean())
    assert by_id["empty"]["verdict"] == "no_frames" and by_id["empty"]["no_frame_reason"] == "empty_sequence"
    assert by_id["stops"]["verdict"] == "no_frames"
    assert by_id["stops"]["no_frame_reason"] == "stop_codon_in_all_frames"
    assert by_id["stops"]["n_chunks"] == 1
    for read in ("read_a", "read_b"):
        (chunk,) = chunks.filter(pl.col("sequence_id") == read).iter_rows(named=True)
        assert by_id[read]["verdict"] == chunk["prediction"]  # one chunk: the reference's own answer

    unreported = pl.read_parquet(out / "unreported.parquet")
    assert set(unreported["sequence_id"]) >= {"empty", "stops"}
    assert (out / "predict_summary.json").exists()


def test_any_rule_and_no_frames_table(run, tmp_path):
    result = invoke("--features", run["features"], "--classifier", run["classifier"], "--chunk-length", 300,
                    "--output", tmp_path, "--sequence-rule", "any")
    assert result.exit_code == 0, result.output
    sequences = pl.read_parquet(tmp_path / "sequence_predictions.parquet")
    chunks = pl.read_parquet(tmp_path / "chunk_predictions.parquet")
    # Without --frames, ids are parsed from the frame ids and only scored sequences are listed.
    assert sequences["sequence_id"].to_list() == ["read_a", "contig", "read_b"]
    for row in sequences.iter_rows(named=True):
        any_virus = (chunks.filter(pl.col("sequence_id") == row["sequence_id"])["prediction"] == "virus").any()
        assert row["verdict"] == ("virus" if any_virus else "others")
    assert not (tmp_path / "unreported.parquet").exists()


def test_safetensors_classifier_gives_identical_scores(run, tmp_path):
    converted = tmp_path / "c.safetensors"
    assert CliRunner().invoke(app, ["convert-classifier", str(run["classifier"]), "-o", str(converted)]).exit_code == 0
    for name, classifier in (("pth", run["classifier"]), ("st", converted)):
        assert invoke("--features", run["features"], "--classifier", classifier, "--chunk-length", 300,
                      "--output", tmp_path / name).exit_code == 0
    assert pl.read_parquet(tmp_path / "pth" / "frame_predictions.parquet").equals(
        pl.read_parquet(tmp_path / "st" / "frame_predictions.parquet"))


def one_line_error(*args) -> tuple[int, str]:
    completed = subprocess.run([str(VIRNUCPRO), "predict", *map(str, args)], capture_output=True, text=True)
    assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr, completed.stderr
    return completed.returncode, completed.stderr


def test_chunk_length_mismatch_is_refused(run, tmp_path):
    code, message = one_line_error("--features", run["features"], "--classifier", run["classifier"],
                                   "--chunk-length", 500, "--output", tmp_path / "o")
    assert code == 4
    assert "trained on 300-nt chunks, but --chunk-length is 500" in message
    assert not (tmp_path / "o").exists()


def test_frames_prepared_for_another_length_are_refused(run, tmp_path):
    code, message = one_line_error("--features", run["features"], "--classifier", run["classifier"],
                                   "--classifier-chunk-length", 500, "--chunk-length", 500,
                                   "--frames", run["frames"], "--output", tmp_path / "o")
    assert code == 3
    assert "prepared with --chunk-length 300, not 500" in message


def test_features_that_miss_frames_are_refused(run, tmp_path):
    ids = run["frame_ids"][:-1]
    partial = write_features(tmp_path / "partial", ids, run["x"][:-1, :DNABERT_DIM].astype(np.float32),
                             run["x"][:-1, DNABERT_DIM:].astype(np.float32))
    code, message = one_line_error("--features", partial, "--classifier", run["classifier"], "--chunk-length", 300,
                                   "--frames", run["frames"], "--output", tmp_path / "o")
    assert code == 3
    assert f"1 frames have no features (first: '{run['frame_ids'][-1]}')" in message


def test_feature_width_must_match_the_classifier(run, tmp_path):
    narrow = write_features(tmp_path / "narrow", run["frame_ids"],
                            run["x"][:, :DNABERT_DIM].astype(np.float32), run["x"][:, :4].astype(np.float32))
    code, message = one_line_error("--features", narrow, "--classifier", run["classifier"], "--chunk-length", 300,
                                   "--output", tmp_path / "o")
    assert code == 4
    assert "classifier expects 24-d features, got DNABERT-S 8 + ESM 4 = 12" in message
