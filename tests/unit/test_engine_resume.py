"""Interruptions and resume [CKPT-01..06]: SIGKILL at random points, SIGTERM flush, corrupt parts, changed inputs.

Each run here is a real `virnucpro embed-frames` subprocess (except where noted); the final feature file of an
interrupted-and-resumed run must be byte-identical to an uninterrupted run's."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.unit.engine_data import BUDGET, EVERY, embed, frames_table, read_all  # noqa: F401 (fixtures)
from tests.unit.engine_data import reference, tiny_models, write_frames  # noqa: F401
from virnucpro.engine.checkpoint import scan_parts
from virnucpro.errors import CheckpointError

SIGKILL_TRIALS = 8


def _command(frames, models, out, *extra, budget=BUDGET, every=EVERY) -> list[str]:
    return [sys.executable, "-c", "from virnucpro.cli import main; main()", "embed-frames",
            "--frames", str(frames), "--esm-model", str(models["esm2"]), "--dnabert-model", str(models["dnabert"]),
            "--output", str(out), "--devices", "cpu", "--token-budget", str(budget),
            "--checkpoint-every", str(every), "--cpu-threads", "1", "--no-progress", *extra]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))


def _parts(ckpt: Path) -> int:
    return len(list(ckpt.glob("*/rank-*/part-*.done")))


def _done_rows(ckpt: Path) -> int:
    return sum(json.loads(p.read_text())["count"] for p in ckpt.glob("*/rank-*/part-*.done"))


@pytest.fixture(scope="module")
def kill_frames(tmp_path_factory) -> Path:
    """A larger table than the shared one: embedding, not start-up, must dominate a run for kills to land in it."""
    return write_frames(tmp_path_factory.mktemp("kill-frames"), records=40, lengths=[150, 300, 450, 700], seed=11,
                        prefix="k")


class _Watched:
    """A run whose stderr is followed, so a kill can be timed from the moment embedding started."""

    def __init__(self, command: list[str]):
        import threading

        self.proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.embedding = threading.Event()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if "event=pass_start" in line:
                self.embedding.set()
        self.embedding.set()  # ended without embedding anything (nothing left, or an error): stop waiting

    def wait(self) -> int:
        self.proc.wait()
        self._reader.join()
        return self.proc.returncode


def test_sigkill_at_random_points_then_resume_is_byte_identical(tmp_path, kill_frames, tiny_models):
    # Small packs and parts: many pack and part boundaries for the kills to fall between (or on).
    reference_dir = tmp_path / "reference"
    reference = read_all(embed(reference_dir, kill_frames, tiny_models, token_budget=64, checkpoint_every=3))
    passes = json.loads((reference_dir / "features.telemetry.json").read_text())["passes"]
    embedding = sum(p["wall_s"] for p in passes)  # the embedding phase of one uninterrupted run, both models
    total = 2 * len(reference[0])
    out = tmp_path / "features"
    ckpt = tmp_path / "features.ckpt"
    rng = random.Random(20261129)
    trials = []
    for trial in range(SIGKILL_TRIALS):
        before = _parts(ckpt) if ckpt.exists() else 0
        remaining = embedding * (total - (_done_rows(ckpt) if ckpt.exists() else 0)) / total
        # Alternate in-process tokenization and a spawned worker: kills must also leave no stuck workers behind.
        run = _Watched(_command(kill_frames, tiny_models, out, "--workers", str(trial % 2), budget=64, every=3))
        if trial == 0:
            phase, delay = "start-up", rng.uniform(0.1, 3.0)
        elif trial % 2:
            # Model loading, planning, worker start: the stretch between planning and the first rows.
            run.embedding.wait(timeout=300)
            phase, delay = "pass start", rng.uniform(0.0, 1.0)
        else:
            # Rows are flowing (a new part appeared in this run): somewhere in what is left to embed.
            deadline = time.monotonic() + 300
            while run.proc.poll() is None and _parts(ckpt) <= before and time.monotonic() < deadline:
                time.sleep(0.01)
            phase, delay = "embedding", rng.uniform(0.0, 0.5 * remaining)
        try:
            run.proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            run.proc.send_signal(signal.SIGKILL)
        code = run.wait()
        after = _parts(ckpt) if ckpt.exists() else 0
        trials.append({"phase": phase, "delay": round(delay, 2), "returncode": code, "parts_before": before,
                       "parts_after": after})
        if code == 0:
            break  # finished before the kill: nothing left to interrupt
        assert code == -signal.SIGKILL, "".join(run.lines)[-2000:]
    print(json.dumps(trials))
    killed_mid_run = [t for t in trials if t["returncode"] == -signal.SIGKILL and t["parts_after"] > t["parts_before"]]
    assert len(killed_mid_run) >= 3, trials  # kills landed while rows were being produced, not only at start-up
    if trials[-1]["returncode"] != 0:
        subprocess.run(_command(kill_frames, tiny_models, out, budget=64, every=3), env=_env(), check=True,
                       capture_output=True)
    ids, dnabert, esm = read_all(out)
    assert ids == reference[0]
    np.testing.assert_array_equal(dnabert, reference[1])
    np.testing.assert_array_equal(esm, reference[2])


@pytest.mark.parametrize("devices", ["cpu", "cpu:2"])  # in-process rank; coordinator forwarding to 2 ranks
def test_sigterm_flushes_then_exits_143_and_resumes(devices, reference, tmp_path, frames_table, tiny_models):
    out = tmp_path / "features"
    ckpt = tmp_path / "features.ckpt"
    # Parts of one pack each: the run is long enough to be caught in the middle.
    command = _command(frames_table, tiny_models, out, "--workers", "1", "--checkpoint-every", "1",
                       "--token-budget", "64", "--devices", devices)
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and (not ckpt.exists() or _parts(ckpt) < 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr.decode()[-2000:]
    assert "run the same command again to resume" in stderr.decode()
    for folder in ckpt.glob("*/rank-*"):
        parts, problems = scan_parts(folder, remove_bad=False)
        assert not problems  # the flush on SIGTERM is a complete, marked part, never a half one
    done = sum(json.loads(p.read_text())["count"] for p in ckpt.glob("*/rank-*/part-*.done"))
    assert 0 < done < 2 * len(reference[0])
    resumed = subprocess.run(command, env=_env(), capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    telemetry = json.loads(Path(f"{out}.telemetry.json").read_text())
    assert sum(p["sequences"] for p in telemetry["passes"]) == 2 * len(reference[0]) - done  # nothing redone
    ids, dnabert, esm = read_all(out)
    # Budget 64 packs differently from the reference's 256: equal to rounding.
    np.testing.assert_allclose(dnabert, reference[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(esm, reference[2], rtol=1e-5, atol=1e-6)


def test_corrupt_truncated_unmarked_parts_are_recomputed(reference, tmp_path, frames_table, tiny_models):
    embed(tmp_path, frames_table, tiny_models, keep_checkpoint=True)
    ckpt = tmp_path / "features.ckpt"
    parts = sorted(ckpt.glob("*/rank-0/part-*.bin"))
    assert len(parts) >= 3
    flipped = bytearray(parts[0].read_bytes())
    flipped[-5] ^= 0x10
    parts[0].write_bytes(bytes(flipped))
    with open(parts[1], "r+b") as handle:
        handle.truncate(parts[1].stat().st_size // 2)
    parts[2].with_suffix(".done").unlink()
    counts = [json.loads(p.with_suffix(".done").read_text())["count"] for p in parts[:2]]
    # The unmarked part's count, from its own header (the marker is gone).
    counts.append(_header_count(parts[2]))
    embed(tmp_path, frames_table, tiny_models, keep_checkpoint=True)
    telemetry = json.loads((tmp_path / "features.telemetry.json").read_text())
    assert sum(p["sequences"] for p in telemetry["passes"]) == sum(counts)  # exactly the damaged rows redone
    ids, dnabert, esm = read_all(tmp_path / "features")
    np.testing.assert_array_equal(dnabert, reference[1])
    np.testing.assert_array_equal(esm, reference[2])


def test_resume_under_another_plan_never_duplicates_rows(reference, tmp_path, frames_table, tiny_models):
    """A resume whose packs differ from the interrupted run's (other token budget or device count) meets packs that
    are partly done: only their new rows may be stored, or aggregation would see duplicates."""
    embed(tmp_path, frames_table, tiny_models, keep_checkpoint=True)
    ckpt = tmp_path / "features.ckpt"
    removed = 0
    for number, part in enumerate(sorted(ckpt.glob("*/rank-0/part-*.bin"))):
        if number % 2:  # every other part lost, as if those flushes never happened
            removed += json.loads(part.with_suffix(".done").read_text())["count"]
            part.with_suffix(".done").unlink()
            part.unlink()
    embed(tmp_path, frames_table, tiny_models, token_budget=100, devices="cpu:2", keep_checkpoint=True)
    telemetry = json.loads((tmp_path / "features.telemetry.json").read_text())
    assert sum(p["sequences"] for p in telemetry["passes"]) > removed  # partly done packs were recomputed whole
    stored = sum(json.loads(m.read_text())["count"] for m in ckpt.glob("*/rank-*/part-*.done"))
    assert stored == 2 * len(reference[0])  # ... but only their missing rows were stored: each row once
    ids, dnabert, esm = read_all(tmp_path / "features")
    np.testing.assert_allclose(dnabert, reference[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(esm, reference[2], rtol=1e-5, atol=1e-6)


def _header_count(path: Path) -> int:
    import struct

    data = path.read_bytes()
    _, length = struct.unpack_from("<8sI", data)
    return json.loads(data[12 : 12 + length])["count"]


def test_changed_input_is_refused(tmp_path, frames_table, tiny_models):
    embed(tmp_path, frames_table, tiny_models, keep_checkpoint=True)
    changed = tmp_path / "changed.parquet"
    table = pl.read_parquet(frames_table)
    table.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("MKV")).otherwise(pl.col("protein"))
                       .alias("protein")).write_parquet(changed)
    with pytest.raises(CheckpointError, match="different run .*--checkpoint-dir or pass --overwrite"):
        embed(tmp_path, changed, tiny_models, checkpoint_dir=tmp_path / "features.ckpt")
    # Through the CLI: one line, exit code 5.
    result = subprocess.run(_command(changed, tiny_models, tmp_path / "features", "--checkpoint-dir",
                                     str(tmp_path / "features.ckpt"), "--workers", "0"),
                            env=_env(), capture_output=True, text=True)
    assert result.returncode == 5
    assert result.stderr.strip().splitlines()[-1].startswith("virnucpro: error: checkpoint")
    # --overwrite starts over and succeeds.
    embed(tmp_path, changed, tiny_models, checkpoint_dir=tmp_path / "features.ckpt", overwrite=True)


def test_changed_model_is_refused(tmp_path, frames_table, tiny_models):
    from virnucpro.models.esm2 import save_tiny_esm2

    embed(tmp_path, frames_table, tiny_models, keep_checkpoint=True)
    other, _ = save_tiny_esm2(tmp_path / "other", seed=1)
    with pytest.raises(CheckpointError, match="esm2 model changed"):
        embed(tmp_path, frames_table, dict(tiny_models, esm2=other))
