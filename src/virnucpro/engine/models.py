"""Model specs the engine accepts: a model folder (through `virnucpro.models.registry`), or `random:<preset>` for
benchmarks: random weights of a real architecture made directly on the device (a 3B model is never written to or
read from disk). Random specs carry a fingerprint of their own so checkpoints never mix them with real weights."""

from __future__ import annotations

from pathlib import Path

import torch

RANDOM_PREFIX = "random:"


def is_random(spec: str | Path) -> bool:
    return str(spec).startswith(RANDOM_PREFIX)


def open_tokenizer(kind: str, spec: str | Path):
    from virnucpro.errors import ModelError

    if is_random(spec):
        if kind != "esm2":
            raise ModelError(f"{spec}: random presets exist for esm2 only (DNABERT-S needs its tokenizer.json: "
                             "make a folder with bench/bench_engine.py or save_tiny_dnabert)")
        from virnucpro.models.esm2 import ESMTokenizer

        return ESMTokenizer()
    from virnucpro.models.registry import load_tokenizer

    return load_tokenizer(kind, spec)


def open_encoder(kind: str, spec: str | Path, *, device: torch.device, dtype: torch.dtype, backend: str):
    if not is_random(spec):
        from virnucpro.models.registry import load_encoder

        return load_encoder(kind, spec, device=device, dtype=dtype, backend=backend)
    from virnucpro.errors import ModelError
    from virnucpro.models.esm2 import PRESETS, ESM2Encoder, build_esm2

    name = str(spec)[len(RANDOM_PREFIX):]
    if kind != "esm2" or name not in PRESETS:
        raise ModelError(f"{spec}: unknown random preset; choose from {', '.join(RANDOM_PREFIX + p for p in PRESETS)}")
    # Seeded random initialisation directly on the device (seconds for 3B instead of minutes through the CPU);
    # every rank builds the same weights.
    model = build_esm2(PRESETS[name], None, device=device, dtype=dtype).requires_grad_(False)
    return ESM2Encoder(model, backend=backend, fingerprint=f"{spec}:seed0", source=str(spec))
