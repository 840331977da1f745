"""One door to every language model: `load_tokenizer(kind, dir)`, `load_encoder(kind, dir, ...)`, `fingerprint`.

Model modules are imported lazily so that importing the registry (e.g. in a CPU DataLoader worker that only needs a
tokenizer) pulls in nothing heavy, and DNABERT-S can be developed beside ESM-2.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from virnucpro.errors import ModelError
from virnucpro.models.encoder import PackedEncoder, SequenceTokenizer

KINDS = ("esm2", "dnabert")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ModelError(f"unknown model kind {kind!r}; choose from {', '.join(KINDS)}")


def _check_dir(kind: str, model_dir: str | Path) -> Path:
    path = Path(model_dir)
    if not path.exists():
        raise ModelError(f"{path}: {kind} model path does not exist")
    if kind == "dnabert":
        # A DNABERT-S folder is a BERT-type HF folder; name the mistake when it is something else we know.
        config = path / "config.json"
        if path.is_dir() and config.is_file():
            try:
                model_type = json.loads(config.read_text()).get("model_type")
            except json.JSONDecodeError as err:
                raise ModelError(f"{config}: not valid JSON ({err})") from None
            if model_type == "esm":
                raise ModelError(f"{config}: model_type is 'esm', an ESM-2 folder, not DNABERT-S "
                                 "(it belongs to --model-kind esm2 / --esm-model)")
        elif path.is_file() or any(path.glob("*.pt")):
            raise ModelError(f"{path}: a .pt checkpoint (fair-esm ESM-2?), not a DNABERT-S folder "
                             "(it belongs to --model-kind esm2 / --esm-model)")
    return path


def load_tokenizer(kind: str, model_dir: str | Path) -> SequenceTokenizer:
    """The model's tokenizer (CPU only, picklable; never touches CUDA)."""
    _check_kind(kind)
    path = _check_dir(kind, model_dir)
    if kind == "esm2":
        from virnucpro.models.esm2 import load_esm2_tokenizer

        return load_esm2_tokenizer(path)
    from virnucpro.models.dnabert import load_dnabert_tokenizer

    return load_dnabert_tokenizer(path)


def load_encoder(kind: str, model_dir: str | Path, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float32, backend: str = "auto") -> PackedEncoder:
    """The packed encoder on `device` in `dtype` with attention `backend` ("auto" picks; see models.attention)."""
    _check_kind(kind)
    path = _check_dir(kind, model_dir)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ModelError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda asked for, but CUDA is not available on this machine")
    try:
        if kind == "esm2":
            from virnucpro.models.esm2 import load_esm2_encoder

            return load_esm2_encoder(path, device=device, dtype=dtype, backend=backend)
        from virnucpro.models.dnabert import load_dnabert_encoder

        return load_dnabert_encoder(path, device=device, dtype=dtype, backend=backend)
    except ValueError as err:  # an explicit attention backend that cannot run here
        if "attention backend" in str(err):
            raise ModelError(str(err)) from None
        raise


# Digests of weight files by (path, size, mtime): a 3B checkpoint takes seconds to hash; do it once per process.
_digest_memo: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digest_memo:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
        _digest_memo[key] = digest.hexdigest()
    return _digest_memo[key]


def fingerprint(kind: str, config: dict[str, Any], files: Iterable[str | Path]) -> str:
    """sha256 over the model kind, its (normalised) config and the sha256 of every weight/config file, by name.

    Stable across copies of the same folder (file names, not paths, enter the digest), different for any change
    of a weight or config value. Checkpoints and embeddings record it and refuse a different model."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"kind": kind, "config": config}, sort_keys=True, default=str).encode())
    for f in sorted(Path(p) for p in files):
        digest.update(f"\0{os.path.basename(f)}\0{file_digest(f)}".encode())
    return digest.hexdigest()


__all__ = ["KINDS", "DTYPES", "load_tokenizer", "load_encoder", "fingerprint", "file_digest"]
