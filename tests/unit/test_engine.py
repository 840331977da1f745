"""embed-frames end to end on CPU with the real tiny models: correctness, worker/device invariance, CUDA-free workers,
outliers, shards, telemetry. Kill/resume trials live in test_engine_resume.py."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pytest
import torch
from torch.utils.data import ConcatDataset

from tests.unit.engine_data import BUDGET, embed, frames_table, read_all  # noqa: F401 (fixtures)
from tests.unit.engine_data import reference, tiny_models  # noqa: F401
from virnucpro.engine.dataset import (LengthDataset, PackDataset, WorkerCudaError, assert_cpu_only_worker,
                                      make_loader)
from virnucpro.engine.worklist import COLUMNS
from virnucpro.io.features import read_features
from virnucpro.models.registry import load_encoder, load_tokenizer


def test_features_are_the_models_per_frame_embeddings_in_frame_order(reference, frames_table, tiny_models):
    ids, dnabert, esm = reference
    table = pl.read_parquet(frames_table)
    assert ids == table["frame_id"].to_list()
    assert dnabert.shape == (len(ids), 32) and esm.shape == (len(ids), 64)
    for kind, array in (("dnabert", dnabert), ("esm2", esm)):
        tokenizer = load_tokenizer(kind, tiny_models[kind])
        encoder = load_encoder(kind, tiny_models[kind])
        for row in (0, len(ids) // 2, len(ids) - 1):
            tokens = tokenizer.encode(table[COLUMNS[kind]][row])
            alone = encoder.embed_packed(torch.tensor(tokens), torch.tensor([0, len(tokens)], dtype=torch.int32),
                                         len(tokens))
            np.testing.assert_allclose(array[row], alone[0].numpy(), rtol=1e-4, atol=1e-5)
    # Rows differ from each other: an id/row misalignment would show.
    assert len(np.unique(esm.round(5), axis=0)) == len(ids)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 4 workers on a 2-core machine, on purpose
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_worker_count_gives_identical_features(workers, reference, tmp_path, frames_table, tiny_models):
    out = embed(tmp_path, frames_table, tiny_models, workers=workers)
    ids, dnabert, esm = read_all(out)
    assert ids == reference[0]
    # Same packs whatever the worker count: byte-identical.
    np.testing.assert_array_equal(dnabert, reference[1])
    np.testing.assert_array_equal(esm, reference[2])


def test_two_cpu_device_processes_match_one(reference, tmp_path, frames_table, tiny_models):
    out = embed(tmp_path, frames_table, tiny_models, devices="cpu:2", keep_checkpoint=True)
    ids, dnabert, esm = read_all(out)
    assert ids == reference[0]
    # Stride sharding changes pack composition, hence float summation order: equal to rounding.
    np.testing.assert_allclose(dnabert, reference[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(esm, reference[2], rtol=1e-5, atol=1e-6)
    ckpt = tmp_path / "features.ckpt"
    for kind in ("dnabert", "esm2"):  # per-rank isolated outputs [CKPT-06, GPU-04]
        assert {p.name for p in (ckpt / kind).glob("rank-*")} == {"rank-0", "rank-1"}
        assert list((ckpt / kind / "rank-1").glob("part-*.done"))


def test_outliers_run_alone_and_change_nothing(reference, tmp_path, frames_table, tiny_models):
    import json

    out = embed(tmp_path, frames_table, tiny_models, token_budget=40)
    telemetry = json.loads((tmp_path / "features.telemetry.json").read_text())
    dna = next(p for p in telemetry["passes"] if p["kind"] == "dnabert")
    assert dna["outlier_packs"] > 0  # PACK-06a exercised
    ids, dnabert, esm = read_all(out)
    np.testing.assert_allclose(dnabert, reference[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(esm, reference[2], rtol=1e-5, atol=1e-6)


def test_shards_then_aggregate(reference, tmp_path, frames_table, tiny_models):
    from typer.testing import CliRunner

    from virnucpro.cli import app
    from virnucpro.errors import CheckpointError
    from virnucpro.engine.aggregate import aggregate_checkpoints

    # Shard 0: its output dir is its checkpoint. Shard 1: checkpoint elsewhere (outside a Nextflow task dir),
    # published into the output dir at the end and then removed.
    shards = [embed(tmp_path / "s0", frames_table, tiny_models, shard=(0, 2)),
              embed(tmp_path / "s1", frames_table, tiny_models, shard=(1, 2), checkpoint_dir=tmp_path / "scratch")]
    assert not (tmp_path / "s0" / "features.ckpt").exists() and not (tmp_path / "scratch").exists()
    assert list((tmp_path / "s1" / "features").glob("*/rank-0/part-*.done"))
    with pytest.raises(CheckpointError, match="missing"):
        aggregate_checkpoints(frames_table, shards[:1], tmp_path / "partial")
    result = CliRunner().invoke(app, ["aggregate", "--frames", str(frames_table), *map(str, shards),
                                      "--output", str(tmp_path / "all")])
    assert result.exit_code == 0, result.output
    ids, dnabert, esm = read_features(tmp_path / "all", verify=True)
    assert ids == reference[0]
    np.testing.assert_allclose(dnabert, reference[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(esm, reference[2], rtol=1e-5, atol=1e-6)


def test_telemetry_reports_rates_efficiency_stages(tmp_path, frames_table, tiny_models):
    import json

    embed(tmp_path, frames_table, tiny_models, workers=1)
    data = json.loads((tmp_path / "features.telemetry.json").read_text())
    for kind in ("dnabert", "esm2"):
        summary = data["per_model"][kind]
        assert summary["tokens_per_s"] > 0 and summary["sequences_per_s"] > 0
        assert 0 < summary["packing_efficiency"] <= 1
        assert summary["gpu_busy"] is None  # CPU: null, with the reason in the pass record
    for p in data["passes"]:
        assert p["gpu_busy_source"] == "not a CUDA device"
        assert p["compute_s"] > 0 and p["wait_input_s"] >= 0 and p["wait_output_s"] >= 0
        assert p["worker_tokenize_s"] > 0 and p["checkpoint_parts"] >= 1


def test_workers_never_initialise_or_see_cuda(frames_table, tiny_models, monkeypatch):
    # Even when the parent exposes a GPU, spawned workers hide it before doing anything [SAFE-01..05].
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    tokenizer = load_tokenizer("dnabert", tiny_models["dnabert"])
    packs = [np.arange(0, 5), np.arange(5, 9), np.arange(9, 12)]
    # One loader (one spawn round) over both datasets the engine uses: the planning pass and the packs.
    dataset = ConcatDataset([PackDataset(frames_table, "dnabert", tokenizer, packs, [0, 1, 2]),
                             LengthDataset(frames_table, np.arange(12), {"dnabert": tokenizer}, block=4)])
    everything = list(make_loader(dataset, workers=2, pin_memory=False))
    items, lengths = everything[:3], everything[3:]
    assert len(lengths) == 3 and all("dnabert" in item for item in lengths)
    for item in everything:
        assert item["in_worker"] and item["worker_pid"] != os.getpid()
        assert item["worker_cuda_visible_devices"] == ""
        assert item["worker_cuda_initialized"] is False
    assert len({item["worker_pid"] for item in items}) == 2
    assert [item["rows"].tolist() for item in items] == [p.tolist() for p in packs]  # order kept


def test_worker_guard_fails_when_a_gpu_is_visible(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(WorkerCudaError, match="CUDA_VISIBLE_DEVICES"):
        assert_cpu_only_worker()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert_cpu_only_worker()


def test_rerun_after_success_is_a_no_op(tmp_path, frames_table, tiny_models):
    from virnucpro.engine.runner import EmbedConfig, embed_frames

    out = embed(tmp_path, frames_table, tiny_models)
    before = (out / "manifest.json").read_text()
    result = embed_frames(EmbedConfig(frames=frames_table, models={k: str(v) for k, v in tiny_models.items()},
                                      output=out, devices="cpu", workers=0, token_budget=BUDGET, progress=False))
    assert result.get("already_complete") is True
    assert (out / "manifest.json").read_text() == before
