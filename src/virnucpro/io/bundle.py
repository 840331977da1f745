"""Array bundles: a directory of row-aligned `.npy` arrays plus their ids, sealed by a manifest.

Layout of a bundle directory:

    ids.parquet      one column `id` (Utf8), row i names row i of every array
    <name>.npy       one 2-D array per name (float32 by default), N rows
    manifest.json    written last: format, version, count, arrays {name: {shape, dtype, sha256}}, extra metadata

A bundle without a manifest is incomplete and is never read. Arrays are opened memory-mapped, so reading a bundle
needs no more RAM than the rows the caller touches. Every file is written to a temporary name, fsynced and renamed,
so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from virnucpro.errors import InputError

MANIFEST = "manifest.json"
IDS = "ids.parquet"
BUNDLE_VERSION = 1


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


class BundleWriter:
    """Writes a bundle of known row count incrementally: rows can arrive in any order, in blocks."""

    def __init__(self, directory: str | Path, count: int, dims: dict[str, int], *, fmt: str,
                 dtype: str = "float32", metadata: dict[str, Any] | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / MANIFEST).unlink(missing_ok=True)  # unsealed until finalize()
        self.count, self.fmt, self.metadata = count, fmt, dict(metadata or {})
        self._tmp_paths = {name: self.directory / f".{name}.npy.tmp-{os.getpid()}" for name in dims}
        self._arrays = {
            name: np.lib.format.open_memmap(self._tmp_paths[name], mode="w+", dtype=dtype, shape=(count, dim))
            for name, dim in dims.items()
        }

    def write_rows(self, start: int, blocks: dict[str, np.ndarray]) -> None:
        for name, block in blocks.items():
            self._arrays[name][start : start + len(block)] = block

    def write_at(self, rows: np.ndarray, blocks: dict[str, np.ndarray]) -> None:
        """Write row k of each block to row rows[k]: for producers whose rows arrive scattered (checkpoint parts)."""
        for name, block in blocks.items():
            self._arrays[name][rows] = block

    def finalize(self, ids: list[str]) -> Path:
        if len(ids) != self.count:
            raise ValueError(f"bundle {self.directory}: {len(ids)} ids for {self.count} rows")
        arrays_meta = {}
        for name, array in self._arrays.items():
            array.flush()
            shape, dtype = list(array.shape), str(array.dtype)
            del array
            with open(self._tmp_paths[name], "rb+") as handle:
                os.fsync(handle.fileno())
            final = self.directory / f"{name}.npy"
            os.replace(self._tmp_paths[name], final)
            arrays_meta[name] = {"shape": shape, "dtype": dtype, "sha256": sha256_file(final)}
        self._arrays = {}
        ids_path = self.directory / IDS
        tmp_ids = ids_path.with_name(f".{IDS}.tmp-{os.getpid()}")
        pl.DataFrame({"id": ids}, schema={"id": pl.Utf8}).write_parquet(tmp_ids)
        with open(tmp_ids, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_ids, ids_path)
        manifest = {
            "format": self.fmt,
            "version": BUNDLE_VERSION,
            "count": self.count,
            "ids_sha256": sha256_file(ids_path),
            "arrays": arrays_meta,
            "metadata": self.metadata,
        }
        atomic_write_bytes(self.directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        return self.directory


def write_bundle(directory: str | Path, ids: list[str], arrays: dict[str, np.ndarray], *, fmt: str,
                 metadata: dict[str, Any] | None = None) -> Path:
    dims = {name: int(array.shape[1]) for name, array in arrays.items()}
    dtypes = {str(array.dtype) for array in arrays.values()}
    writer = BundleWriter(directory, len(ids), dims, fmt=fmt, dtype=dtypes.pop() if len(dtypes) == 1 else "float32",
                          metadata=metadata)
    writer.write_rows(0, arrays)
    return writer.finalize(list(ids))


def read_manifest(directory: str | Path, *, fmt: str) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise InputError(f"{directory}: not found or not a directory (expected a {fmt} bundle)")
    if not path.exists():
        raise InputError(f"{directory}: no {MANIFEST}; the bundle is incomplete (interrupted write?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: corrupt manifest: {err}") from err
    if manifest.get("format") != fmt:
        raise InputError(f"{directory}: holds {manifest.get('format')!r}, expected {fmt!r}")
    return manifest


def read_bundle(directory: str | Path, *, fmt: str, verify: bool = False) -> tuple[list[str], dict[str, np.ndarray], dict]:
    """Return (ids, {name: memory-mapped array}, manifest). `verify` re-checks every checksum (reads all bytes)."""
    directory = Path(directory)
    manifest = read_manifest(directory, fmt=fmt)
    ids_path = directory / IDS
    if verify and sha256_file(ids_path) != manifest["ids_sha256"]:
        raise InputError(f"{ids_path}: checksum mismatch (file changed or corrupt)")
    ids = pl.read_parquet(ids_path)["id"].to_list()
    arrays = {}
    for name, meta in manifest["arrays"].items():
        path = directory / f"{name}.npy"
        if verify and sha256_file(path) != meta["sha256"]:
            raise InputError(f"{path}: checksum mismatch (file changed or corrupt)")
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: unreadable array: {err}") from err
        if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"]:
            raise InputError(f"{path}: shape/dtype {list(array.shape)}/{array.dtype} differ from manifest "
                             f"{meta['shape']}/{meta['dtype']}")
        arrays[name] = array
    if len(ids) != manifest["count"]:
        raise InputError(f"{ids_path}: {len(ids)} ids but manifest says {manifest['count']} rows")
    return ids, arrays, manifest
