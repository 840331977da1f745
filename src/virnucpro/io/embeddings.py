"""The output of `virnucpro embed`: one mean-pooled embedding per input record, in input order.

A bundle (see `virnucpro.io.bundle`) with one array `embeddings` [N, hidden], float32, format name
`virnucpro-embeddings`; the manifest's metadata names the model kind, folder and fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from virnucpro.io.bundle import BundleWriter, read_bundle, write_bundle

EMBEDDINGS_FORMAT = "virnucpro-embeddings"


def write_embeddings(directory: str | Path, ids: list[str], embeddings: np.ndarray,
                     metadata: dict[str, Any] | None = None) -> Path:
    return write_bundle(directory, ids, {"embeddings": embeddings}, fmt=EMBEDDINGS_FORMAT, metadata=metadata)


def embeddings_writer(directory: str | Path, count: int, dim: int, metadata: dict[str, Any] | None = None) -> BundleWriter:
    return BundleWriter(directory, count, {"embeddings": dim}, fmt=EMBEDDINGS_FORMAT, metadata=metadata)


def read_embeddings(path: str | Path, *, verify: bool = False) -> tuple[list[str], np.ndarray]:
    """Return (ids, embeddings [N, hidden]); the array is memory-mapped, read-only."""
    ids, arrays, _ = read_bundle(path, fmt=EMBEDDINGS_FORMAT, verify=verify)
    return ids, arrays["embeddings"]
