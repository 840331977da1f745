"""Engine on real GPUs (run on the H200 machine): `pytest -m gpu tests/gpu/test_engine_gpu.py -v`.

Without CUDA every test here FAILS (it never skips: a GPU suite that silently passes on a laptop proves nothing).
The 2-GPU comparison needs two visible GPUs; with one it is reported as NOT RUN, both as a pytest skip with that
reason and in the JSON report written to $VIRNUCPRO_GPU_REPORT (default tests/gpu/results/engine-gpu.json).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

REPORT = Path(os.environ.get("VIRNUCPRO_GPU_REPORT", Path(__file__).parent / "results" / "engine-gpu.json"))


def _record(name: str, value) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[name] = value
    REPORT.write_text(json.dumps(data, indent=2, default=str) + "\n")


@pytest.fixture(scope="module", autouse=True)
def require_cuda():
    if not torch.cuda.is_available():
        pytest.fail("CUDA is not available: the GPU engine tests must run on a GPU machine (they fail, never skip)")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Small random models of the real architectures in the real formats; bigger than the CPU tiny ones so that
    fp16 rounding and GPU attention kernels are exercised on realistic head sizes."""
    from virnucpro.models.dnabert import save_tiny_dnabert
    from virnucpro.models.esm2 import ESM2, ESM2Config, init_random_, save_hf_folder

    root = tmp_path_factory.mktemp("gpu-models")
    esm = ESM2(ESM2Config(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024))
    save_hf_folder(init_random_(esm, seed=0, std=0.02), root / "esm2")
    save_tiny_dnabert(root / "dnabert", seed=0, num_layers=4, hidden_size=256, num_heads=4, intermediate_size=512,
                      vocab_size=512)
    return {"esm2": root / "esm2", "dnabert": root / "dnabert"}


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """A frame table (the three columns the engine reads) with read-like and contig-like lengths, written with
    polars only, so this file depends on nothing but the engine and the models."""
    import polars as pl

    rng = random.Random(3)
    ids, nucleotides, proteins = [], [], []
    for i in range(3000):
        residues = rng.choice([16, 30, 50, 50, 50, 100, 166, 400, 1100])  # 1100 > 1024: the ESM-2 truncation path
        ids.append(f"g{i}_chunk_1F1")
        proteins.append("".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(residues)))
        nucleotides.append("".join(rng.choice("ACGT") for _ in range(3 * residues + 1)))
    path = tmp_path_factory.mktemp("gpu-frames") / "frames.parquet"
    pl.DataFrame({"frame_id": ids, "nucleotide": nucleotides, "protein": proteins}).write_parquet(path)
    return path


def _embed(tmp_path: Path, frames: Path, models: dict, **options):
    from virnucpro.engine.runner import EmbedConfig, embed_frames
    from virnucpro.io.features import read_features

    out = tmp_path / "features"
    settings = dict(workers=4, progress=False, checkpoint_every=2000)
    settings.update(options)
    telemetry = embed_frames(EmbedConfig(frames=frames, models={k: str(v) for k, v in models.items()}, output=out,
                                         **settings))
    ids, dnabert, esm = read_features(out, verify=True)
    return ids, np.array(dnabert), np.array(esm), telemetry


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def cpu_reference(tmp_path_factory, frames, models):
    return _embed(tmp_path_factory.mktemp("cpu"), frames, models, devices="cpu", dtype="fp32", workers=2)


@pytest.fixture(scope="module")
def one_gpu(tmp_path_factory, frames, models):
    return _embed(tmp_path_factory.mktemp("gpu1"), frames, models, devices="cuda:0", dtype="fp16")


def test_one_gpu_fp16_matches_cpu_fp32(cpu_reference, one_gpu):
    assert one_gpu[0] == cpu_reference[0]
    result = {}
    for name, index in (("dnabert", 1), ("esm", 2)):
        cos = _cosines(one_gpu[index], cpu_reference[index])
        result[name] = {"min_cos": float(cos.min()), "mean_cos": float(cos.mean())}
        assert cos.min() >= 0.99, (name, cos.min())
    _record("one_gpu_fp16_vs_cpu_fp32", result)


def test_two_gpus_match_one(tmp_path, frames, models, one_gpu):
    if torch.cuda.device_count() < 2:
        _record("two_gpus_vs_one", {"status": "NOT RUN", "reason": f"{torch.cuda.device_count()} GPU visible"})
        pytest.skip("NOT RUN: needs 2 visible GPUs (recorded as not run in the JSON report)")
    two = _embed(tmp_path, frames, models, devices="cuda:0,1", dtype="fp16")
    assert two[0] == one_gpu[0]
    result = {"status": "run"}
    for name, index in (("dnabert", 1), ("esm", 2)):
        cos = _cosines(two[index], one_gpu[index])
        result[name] = {"min_cos": float(cos.min())}
        assert cos.min() >= 0.999, (name, cos.min())
    assert {p["rank"] for p in two[3]["passes"]} == {0, 1}
    _record("two_gpus_vs_one", result)


@pytest.fixture(scope="module")
def overlap_run(tmp_path_factory, frames):
    """Production-like shapes (ESM-2 150M random preset, a DNABERT-S-shaped folder) and small packs (many of them),
    so per-pack host work and copies would show as idle compute if they were not overlapped."""
    from virnucpro.models.dnabert import save_tiny_dnabert

    root = tmp_path_factory.mktemp("overlap")
    dnabert = save_tiny_dnabert(root / "dnabert", seed=0, num_layers=12, hidden_size=768, num_heads=12,
                                intermediate_size=3072, vocab_size=512)
    models = {"esm2": "random:esm2_t30_150M", "dnabert": dnabert}
    return _embed(root, frames, models, devices="cuda:0", dtype="fp16", token_budget=16384)


def test_overlap_telemetry_is_sane(overlap_run):
    telemetry = overlap_run[3]
    _record("overlap_telemetry", telemetry)
    nvml = importlib.util.find_spec("pynvml") is not None
    for p in telemetry["passes"]:
        assert p["packs"] >= 10, p  # enough packs for a pipeline to exist
        assert p["h2d_s"] > 0 and p["compute_s"] > 0 and p["d2h_s"] > 0
        assert p["compute_s"] <= p["wall_s"] * 1.05
        # CUDA event timeline: the compute stream stays busy from its first to its last kernel, and copies ran
        # while it computed (the H2D of pack N+1 or the D2H of pack N-1 during pack N).
        assert p["compute_stream_busy"] >= 0.6, p
        assert p["h2d_overlap_s"] + p["d2h_overlap_s"] > 0, p
        if nvml:
            assert p["gpu_busy"] is not None and 0 <= p["gpu_busy"] <= 1, p
            assert p["gpu_busy_source"] == "nvml"
        else:
            assert p["gpu_busy"] is None and "not installed" in p["gpu_busy_source"]
    if not nvml:
        pytest.xfail("nvidia-ml-py missing here: GPU busy fraction reported as null with the reason")


def test_workers_stay_cuda_free_while_the_parent_uses_cuda(frames, models):
    from virnucpro.engine.dataset import PackDataset, make_loader
    from virnucpro.models.registry import load_tokenizer

    torch.zeros(1, device="cuda")  # the parent holds a CUDA context, like a GPU rank
    assert torch.cuda.is_initialized()
    tokenizer = load_tokenizer("esm2", models["esm2"])
    packs = [np.arange(i, i + 10) for i in range(0, 40, 10)]
    items = list(make_loader(PackDataset(frames, "esm2", tokenizer, packs, list(range(4))), workers=2,
                             pin_memory=True))
    for item in items:
        assert item["in_worker"] and item["worker_pid"] != os.getpid()
        assert item["worker_cuda_initialized"] is False and item["worker_cuda_visible_devices"] == ""
        assert item["input_ids"].is_pinned()  # pinned by the main process's pin thread [ARCH-04, SAFE-05]


def test_budget_comes_from_free_memory(one_gpu):
    for p in one_gpu[3]["passes"]:
        assert p["budget_source"].startswith("free="), p["budget_source"]
