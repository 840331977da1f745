"""Checkpoint parts, markers, identity and locking [CKPT-03..06]."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from virnucpro.engine.checkpoint import CheckpointDir, read_part, scan_parts, write_part
from virnucpro.errors import CheckpointError

IDENTITY = {"worklist_fingerprint": "abc", "frames": 100, "dtype": "fp32", "shard": None}


def _part(folder, number, rows, dim=8, seed=0):
    emb = np.random.default_rng(seed).standard_normal((len(rows), dim)).astype(np.float32)
    return write_part(folder, number, np.asarray(rows, dtype=np.int64), emb, {"kind": "esm2"}), emb


def test_part_roundtrip(tmp_path):
    part, emb = _part(tmp_path, 0, [5, 3, 9])
    rows, back = read_part(part)
    assert rows.tolist() == [5, 3, 9]
    np.testing.assert_array_equal(back, emb)
    marker = json.loads(part.path.with_suffix(".done").read_text())
    assert marker["count"] == 3 and marker["size"] == part.path.stat().st_size and len(marker["sha256"]) == 64
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temp file that was renamed


def test_truncated_corrupt_and_unmarked_parts_are_dropped(tmp_path):
    good, _ = _part(tmp_path, 0, [0, 1])
    truncated, _ = _part(tmp_path, 1, [2, 3])
    corrupt, _ = _part(tmp_path, 2, [4, 5])
    unmarked, _ = _part(tmp_path, 3, [6, 7])
    with open(truncated.path, "r+b") as handle:
        handle.truncate(truncated.path.stat().st_size - 4)
    data = bytearray(corrupt.path.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit in an embedding: same size, only the checksum can tell
    corrupt.path.write_bytes(bytes(data))
    unmarked.path.with_suffix(".done").unlink()
    (tmp_path / ".part-000009.bin.tmp-123").write_bytes(b"half")
    parts, problems = scan_parts(tmp_path)
    assert [p.path.name for p in parts] == [good.path.name]
    assert len(problems) == 3
    assert not truncated.path.exists() and not corrupt.path.exists() and not unmarked.path.exists()
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(CheckpointError, match="checksum"):
        read_part(_reload_corrupt(tmp_path))


def _reload_corrupt(tmp_path):
    part, _ = _part(tmp_path, 7, [1])
    data = bytearray(part.path.read_bytes())
    data[-1] ^= 1
    part.path.write_bytes(bytes(data))
    return part


def test_identity_mismatch_is_refused(tmp_path):
    ckpt = CheckpointDir(tmp_path / "ck")
    assert ckpt.open(IDENTITY) is False
    ckpt.unlock()
    assert CheckpointDir(tmp_path / "ck").open(IDENTITY) is True
    with pytest.raises(CheckpointError, match="--checkpoint-dir or pass --overwrite"):
        CheckpointDir(tmp_path / "ck").open(dict(IDENTITY, worklist_fingerprint="other"))
    with pytest.raises(CheckpointError, match="dtype"):
        CheckpointDir(tmp_path / "ck").open(dict(IDENTITY, dtype="fp16"))
    # --overwrite starts over
    assert CheckpointDir(tmp_path / "ck").open(dict(IDENTITY, dtype="fp16"), overwrite=True) is False


def test_foreign_non_empty_directory_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not empty"):
        CheckpointDir(tmp_path).open(IDENTITY)


def test_changed_model_is_refused(tmp_path):
    ckpt = CheckpointDir(tmp_path)
    ckpt.open(IDENTITY)
    ckpt.register_model("esm2", {"fingerprint": "m1", "hidden_size": 8})
    ckpt.register_model("esm2", {"fingerprint": "m1", "hidden_size": 8})  # same model: fine
    with pytest.raises(CheckpointError, match="esm2 model changed"):
        ckpt.register_model("esm2", {"fingerprint": "m2", "hidden_size": 8})


def test_second_run_on_same_directory_is_locked_out(tmp_path):
    ckpt = CheckpointDir(tmp_path)
    ckpt.open(IDENTITY)
    code = ("import sys; from virnucpro.engine.checkpoint import CheckpointDir; from virnucpro.errors import "
            "CheckpointError\ntry:\n    CheckpointDir(sys.argv[1]).lock()\nexcept CheckpointError:\n    sys.exit(7)")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == 7
    ckpt.unlock()
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == 0


def test_done_rows_unions_every_rank(tmp_path):
    ckpt = CheckpointDir(tmp_path)
    ckpt.open(IDENTITY)
    _part(ckpt.rank_folder("esm2", 0), 0, [1, 2])
    _part(ckpt.rank_folder("esm2", 1), 0, [7])
    _part(ckpt.rank_folder("dnabert", 0), 0, [3])
    done = ckpt.done_rows("esm2", 10)
    assert np.flatnonzero(done).tolist() == [1, 2, 7]
    with pytest.raises(CheckpointError, match="beyond"):
        ckpt.done_rows("esm2", 5)
