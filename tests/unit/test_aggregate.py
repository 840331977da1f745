"""Aggregation [GPU-03]: exactly-once coverage, dims, NaN/Inf, identity of shards, feature-file layout."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from virnucpro.engine.aggregate import aggregate_checkpoints
from virnucpro.engine.checkpoint import CheckpointDir, write_part
from virnucpro.engine.worklist import load_worklist
from virnucpro.errors import CheckpointError
from virnucpro.io.features import read_features

N = 12
DIMS = {"dnabert": 4, "esm2": 6}


@pytest.fixture
def frames(tmp_path):
    path = tmp_path / "frames.parquet"
    pl.DataFrame({"frame_id": [f"s{i}_chunk_1F1" for i in range(N)], "nucleotide": ["ACGTAC"] * N,
                  "protein": ["MK" * (i + 1) for i in range(N)]}).write_parquet(path)
    return path


def _truth(kind):
    rng = np.random.default_rng(0 if kind == "dnabert" else 1)
    return rng.standard_normal((N, DIMS[kind])).astype(np.float32)


def _shard(tmp_path, frames, name, assignment, *, fingerprint_model="m", mutate=None):
    """A checkpoint dir whose rank r holds rows assignment[r] of both models (truth values)."""
    ckpt = CheckpointDir(tmp_path / name)
    ckpt.open({"worklist_fingerprint": load_worklist(frames).fingerprint, "frames": N, "dtype": "fp32",
               "shard": None})
    for kind in DIMS:
        ckpt.register_model(kind, {"fingerprint": f"{fingerprint_model}-{kind}", "hidden_size": DIMS[kind]})
        for rank, rows in enumerate(assignment):
            rows = np.asarray(rows, dtype=np.int64)
            emb = _truth(kind)[rows].copy()
            if mutate is not None:
                emb = mutate(kind, rows, emb)
            write_part(ckpt.rank_folder(kind, rank), 0, rows, emb, {})
    ckpt.unlock()
    return ckpt.path


def test_scattered_ranks_and_shards_give_rows_in_frame_order(tmp_path, frames):
    a = _shard(tmp_path, frames, "a", [[11, 3, 7], [0, 5]])
    b = _shard(tmp_path, frames, "b", [[1, 2, 4, 6, 8, 9, 10]])
    out = aggregate_checkpoints(frames, [a, b], tmp_path / "features")
    ids, dnabert, esm = read_features(out, verify=True)
    assert ids == [f"s{i}_chunk_1F1" for i in range(N)]
    np.testing.assert_array_equal(dnabert, _truth("dnabert"))
    np.testing.assert_array_equal(esm, _truth("esm2"))


def test_missing_rows_are_named(tmp_path, frames):
    a = _shard(tmp_path, frames, "a", [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    with pytest.raises(CheckpointError, match=r"missing for 2 of 12 frames: s10_chunk_1F1, s11_chunk_1F1"):
        aggregate_checkpoints(frames, [a], tmp_path / "features")


def test_duplicate_rows_are_refused(tmp_path, frames):
    a = _shard(tmp_path, frames, "a", [list(range(N))])
    b = _shard(tmp_path, frames, "b", [[4]])
    with pytest.raises(CheckpointError, match="more than once: s4_chunk_1F1"):
        aggregate_checkpoints(frames, [a, b], tmp_path / "features")


def test_nan_is_refused(tmp_path, frames):
    def poison(kind, rows, emb):
        if kind == "esm2":
            emb[rows == 3] = np.nan
        return emb

    a = _shard(tmp_path, frames, "a", [list(range(N))], mutate=poison)
    with pytest.raises(CheckpointError, match="NaN/Inf in esm2 embeddings of s3_chunk_1F1"):
        aggregate_checkpoints(frames, [a], tmp_path / "features")


def test_shards_of_other_models_or_tables_are_refused(tmp_path, frames):
    a = _shard(tmp_path, frames, "a", [list(range(6))])
    b = _shard(tmp_path, frames, "b", [list(range(6, N))], fingerprint_model="other")
    with pytest.raises(CheckpointError, match="another model"):
        aggregate_checkpoints(frames, [a, b], tmp_path / "features")
    other = tmp_path / "other.parquet"
    pl.read_parquet(frames).with_columns(pl.lit("MA").alias("protein")).write_parquet(other)
    with pytest.raises(CheckpointError, match="different frame table"):
        aggregate_checkpoints(other, [a], tmp_path / "features")


def test_wrong_dim_is_refused(tmp_path, frames):
    a = _shard(tmp_path, frames, "a", [list(range(N))])
    # A part whose width disagrees with the recorded model.
    write_part(CheckpointDir(a).rank_folder("esm2", 5), 0, np.array([0]), np.zeros((1, 3), np.float32), {})
    with pytest.raises(CheckpointError, match="dim 3"):
        aggregate_checkpoints(frames, [a], tmp_path / "features")


def test_aggregate_cli(tmp_path, frames):
    from typer.testing import CliRunner

    from virnucpro.cli import app

    a = _shard(tmp_path, frames, "a", [list(range(0, N, 2))])
    b = _shard(tmp_path, frames, "b", [list(range(1, N, 2))])
    result = CliRunner().invoke(app, ["aggregate", "--frames", str(frames), str(a), str(b), "--output",
                                      str(tmp_path / "f")])
    assert result.exit_code == 0, result.output
    ids, dnabert, _ = read_features(tmp_path / "f")
    assert len(ids) == N
    np.testing.assert_array_equal(dnabert, _truth("dnabert"))
