"""The feature file that `embed-frames` writes and `predict` reads: one bundle (see `virnucpro.io.bundle`).

Arrays: `dnabert` [N, 768] and `esm` [N, esm_dim] (2560 for ESM-2 3B), float32, row i = frame id i, rows in the
frame table's order. Format name: `virnucpro-features`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from virnucpro.io.bundle import BundleWriter, read_bundle, write_bundle

FEATURES_FORMAT = "virnucpro-features"


def write_features(directory: str | Path, frame_ids: list[str], dnabert: np.ndarray, esm: np.ndarray,
                   metadata: dict[str, Any] | None = None) -> Path:
    return write_bundle(directory, frame_ids, {"dnabert": dnabert, "esm": esm}, fmt=FEATURES_FORMAT,
                        metadata=metadata)


def features_writer(directory: str | Path, count: int, dnabert_dim: int, esm_dim: int,
                    metadata: dict[str, Any] | None = None) -> BundleWriter:
    return BundleWriter(directory, count, {"dnabert": dnabert_dim, "esm": esm_dim}, fmt=FEATURES_FORMAT,
                        metadata=metadata)


def read_features(path: str | Path, *, verify: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return (frame_ids, dnabert [N, 768], esm [N, D]); the arrays are memory-mapped, read-only."""
    ids, arrays, _ = read_bundle(path, fmt=FEATURES_FORMAT, verify=verify)
    return ids, arrays["dnabert"], arrays["esm"]
