"""Shared data for the engine tests: real tiny models, a small frame table from `prepare`, a reference run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

# Small enough that a run takes seconds on a loaded 2-core machine, large enough for several packs and parts.
BUDGET = 256
EVERY = 8


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from virnucpro.models.dnabert import save_tiny_dnabert
    from virnucpro.models.esm2 import save_tiny_esm2

    root = tmp_path_factory.mktemp("engine-models")
    esm, _ = save_tiny_esm2(root, seed=0)
    dnabert = save_tiny_dnabert(root / "dnabert", seed=0)
    return {"esm2": Path(esm), "dnabert": Path(dnabert)}


def write_frames(root: Path, *, records: int, lengths: list[int], seed: int, prefix: str) -> Path:
    """Random GC-rich reads (fewer stop codons, more kept frames per chunk) through the real `prepare`."""
    from virnucpro.preprocess.prepare import prepare

    rng = random.Random(seed)
    with open(root / "reads.fa", "w") as handle:
        for i in range(records):
            length = rng.choice(lengths)
            handle.write(f">{prefix}{i}\n{''.join(rng.choice('ACGTGGCC') for _ in range(length))}\n")
    out = root / "frames.parquet"
    prepare(root / "reads.fa", out, chunk_length=300)
    return out


@pytest.fixture(scope="session")
def frames_table(tmp_path_factory) -> Path:
    return write_frames(tmp_path_factory.mktemp("engine-frames"), records=18, lengths=[60, 150, 150, 300, 450, 700],
                        seed=7, prefix="r")


def embed(tmp_path: Path, frames: Path, models: dict[str, Path], **options) -> Path:
    """In-process embed-frames on CPU; returns the feature file path. Writes the telemetry like the CLI does."""
    from virnucpro.engine.runner import EmbedConfig, embed_frames

    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "features"
    settings = dict(devices="cpu", workers=0, token_budget=BUDGET, checkpoint_every=EVERY, cpu_threads=1,
                    progress=False)
    settings.update(options)
    result = embed_frames(EmbedConfig(frames=frames, models={k: str(v) for k, v in models.items()}, output=out,
                                      **settings))
    (tmp_path / "features.telemetry.json").write_text(json.dumps(result, default=str))
    return out


def read_all(path: Path):
    from virnucpro.io.features import read_features

    ids, dnabert, esm = read_features(path, verify=True)
    return ids, np.array(dnabert), np.array(esm)


@pytest.fixture(scope="session")
def reference(tmp_path_factory, frames_table, tiny_models):
    """An uninterrupted single-process run: what every other run must reproduce."""
    return read_all(embed(tmp_path_factory.mktemp("engine-reference"), frames_table, tiny_models))
