"""Reading and writing everything that crosses a file boundary: FASTA in, tables and embeddings out.

Public readers are re-exported here lazily so that `from virnucpro.io import read_embeddings` does not import
torch-free modules' heavy neighbours.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "read_fasta": "virnucpro.io.fasta",
    "FastaRecord": "virnucpro.io.fasta",
    "FastaFormatError": "virnucpro.io.fasta",
    "read_embeddings": "virnucpro.io.embeddings",
    "write_embeddings": "virnucpro.io.embeddings",
    "read_features": "virnucpro.io.features",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'virnucpro.io' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
