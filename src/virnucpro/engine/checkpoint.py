"""Checkpoint directory: run identity, per-model per-rank shard files, their markers, and resume bookkeeping.

Layout (default `<output>.ckpt`, any path via --checkpoint-dir, e.g. outside a Nextflow task work dir):

    run.json                          identity: work-list fingerprint, frame count, dtype, shard spec (written once)
    lock                              flock'ed by the running coordinator: two runs never share a directory
    lengths.npz                       cached token lengths of the work list (planning only, never trusted for rows)
    <kind>/model.json                 model fingerprint + hidden size (first rank to load the model writes it)
    <kind>/rank-<r>/plan.json         token budget this rank planned with (reused on resume: identical packs)
    <kind>/rank-<r>/part-<n>.bin      rows: global frame-table indices (int64) + float32 embeddings
    <kind>/rank-<r>/part-<n>.done     marker: size, count, dim, sha256 of the .bin (written after it)

Each rank writes only its own `rank-<r>` folder [CKPT-06, GPU-04]. Both files are written atomically (temp file,
fsync, rename, fsync of the folder) [CKPT-04]; a part counts only when its marker exists and the part's size, count
and checksum match it [CKPT-03, CKPT-05]; anything else is deleted and its rows are recomputed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from virnucpro.errors import CheckpointError
from virnucpro.io.bundle import atomic_write_bytes, fsync_dir

log = logging.getLogger("virnucpro.engine.checkpoint")

RUN_FILE = "run.json"
LOCK_FILE = "lock"
LENGTHS_FILE = "lengths.npz"
MAGIC = b"VNPPART1"
# MAGIC, header length (uint32), then the JSON header padded so the payload starts 64-byte aligned.
_PREFIX = struct.Struct("<8sI")
CHECKPOINT_VERSION = 1


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _hint(directory: Path) -> str:
    return f"use a new --checkpoint-dir or pass --overwrite to discard {directory}"


# --------------------------------------------------------------------------------------------------- part files

@dataclass(frozen=True)
class Part:
    path: Path
    marker: dict

    @property
    def count(self) -> int:
        return int(self.marker["count"])


def _encode_part(rows: np.ndarray, embeddings: np.ndarray, meta: dict) -> tuple[bytes, bytes]:
    header = dict(meta, count=int(len(rows)), dim=int(embeddings.shape[1]), dtype="float32")
    raw = json.dumps(header, sort_keys=True).encode()
    pad = (-(_PREFIX.size + len(raw))) % 64
    head = _PREFIX.pack(MAGIC, len(raw) + pad) + raw + b" " * pad
    return head, np.ascontiguousarray(rows, dtype="<i8").tobytes() + np.ascontiguousarray(
        embeddings, dtype="<f4").tobytes()


def write_part(folder: Path, number: int, rows: np.ndarray, embeddings: np.ndarray, meta: dict) -> Part:
    """Write part `number` atomically, then its marker (the marker is what makes the rows count as done)."""
    if len(rows) != len(embeddings):
        raise ValueError(f"{len(rows)} row indices for {len(embeddings)} embeddings")
    folder.mkdir(parents=True, exist_ok=True)
    head, payload = _encode_part(rows, embeddings, meta)
    path = folder / f"part-{number:06d}.bin"
    tmp = folder / f".{path.name}.tmp-{os.getpid()}"
    digest = hashlib.sha256(head)
    digest.update(payload)
    with open(tmp, "wb") as handle:
        handle.write(head)
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(folder)
    marker = {"file": path.name, "size": len(head) + len(payload), "count": int(len(rows)),
              "dim": int(embeddings.shape[1]), "dtype": "float32", "sha256": digest.hexdigest()}
    atomic_write_bytes(path.with_suffix(".done"), _json_bytes(marker))
    return Part(path, marker)


def read_part(part: Part, *, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64 [n], embeddings float32 [n, dim]); raises CheckpointError when the file does not match its
    marker (size, header, count, dim, checksum) [CKPT-05]."""
    path, marker = part.path, part.marker
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: unreadable checkpoint part: {err}") from err
    if len(data) != marker["size"]:
        raise CheckpointError(f"{path}: {len(data)} bytes, marker says {marker['size']} (truncated?)")
    if verify and hashlib.sha256(data).hexdigest() != marker["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch (corrupt)")
    magic, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError(f"{path}: not a checkpoint part (bad magic)")
    header = json.loads(data[_PREFIX.size : _PREFIX.size + head_len])
    count, dim = header["count"], header["dim"]
    if count != marker["count"] or dim != marker["dim"]:
        raise CheckpointError(f"{path}: header count/dim {count}/{dim} differ from marker")
    start = _PREFIX.size + head_len
    if len(data) != start + count * 8 + count * dim * 4:
        raise CheckpointError(f"{path}: payload size does not match {count} rows of dim {dim}")
    rows = np.frombuffer(data, dtype="<i8", count=count, offset=start)
    emb = np.frombuffer(data, dtype="<f4", count=count * dim, offset=start + count * 8).reshape(count, dim)
    return rows, emb


def read_part_rows(part: Part) -> np.ndarray:
    """Only the row indices of a part (a few bytes per row): what resume needs once the part has been verified."""
    with open(part.path, "rb") as handle:
        magic, head_len = _PREFIX.unpack(handle.read(_PREFIX.size))
        handle.seek(_PREFIX.size + head_len)
        rows = np.frombuffer(handle.read(part.count * 8), dtype="<i8")
    if magic != MAGIC or len(rows) != part.count:
        raise CheckpointError(f"{part.path}: not a checkpoint part or truncated")
    return rows


def scan_parts(folder: Path, *, verify: bool = True, remove_bad: bool = True) -> tuple[list[Part], list[str]]:
    """Valid parts of one rank folder, in part order, and a list of problems found. Unmarked, mismatched or corrupt
    parts (and stale temp files) are removed when `remove_bad`, so their rows are simply recomputed."""
    parts: list[Part] = []
    problems: list[str] = []
    if not folder.is_dir():
        return parts, problems
    for tmp in folder.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)  # left by a killed writer; never renamed, so never trusted

    def check(bin_path: Path) -> tuple[Path, Part | None, str | None]:
        marker_path = bin_path.with_suffix(".done")
        if not marker_path.exists():
            return bin_path, None, f"{bin_path.name}: no marker (interrupted write)"
        try:
            part = Part(bin_path, json.loads(marker_path.read_text()))
            if verify:
                rows, _ = read_part(part, verify=True)
            else:  # cheap checks only: size against the marker, header, row indices
                if bin_path.stat().st_size != part.marker["size"]:
                    raise CheckpointError(f"{bin_path}: size differs from its marker (truncated?)")
                rows = read_part_rows(part)
            if len(rows) and (rows.min() < 0):
                raise CheckpointError(f"{bin_path}: negative row index")
            return bin_path, part, None
        except (CheckpointError, json.JSONDecodeError, KeyError, ValueError, struct.error) as err:
            return bin_path, None, f"{bin_path.name}: {err}"

    bins = sorted(folder.glob("part-*.bin"))
    # hashlib releases the GIL: checking parts in threads keeps a resume over many GiB of parts I/O bound.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(check, bins))
    for bin_path, part, problem in results:
        if part is not None:
            parts.append(part)
            continue
        problems.append(problem)
        if remove_bad:
            bin_path.unlink(missing_ok=True)
            bin_path.with_suffix(".done").unlink(missing_ok=True)
    for marker_path in folder.glob("part-*.done"):
        if not marker_path.with_suffix(".bin").exists():
            problems.append(f"{marker_path.name}: marker without part")
            if remove_bad:
                marker_path.unlink(missing_ok=True)
    return parts, problems


def next_part_number(folder: Path) -> int:
    numbers = [int(p.stem.split("-")[1]) for p in folder.glob("part-*.bin")] if folder.is_dir() else []
    return max(numbers, default=-1) + 1


# --------------------------------------------------------------------------------------------------- directory

class CheckpointDir:
    """One checkpoint directory; see the module docstring for the layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_handle = None

    # -- identity -------------------------------------------------------------------------------------------
    def open(self, identity: dict[str, Any], *, overwrite: bool = False) -> bool:
        """Create or reopen the directory for a run with `identity` (work-list fingerprint, count, dtype, shard).
        Returns True when resuming. A directory made for other inputs is refused with CheckpointError."""
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        run_path = self.path / RUN_FILE
        if run_path.exists():
            try:
                stored = json.loads(run_path.read_text())
            except json.JSONDecodeError as err:
                raise CheckpointError(f"{run_path}: corrupt ({err}); {_hint(self.path)}") from err
            for key, value in identity.items():
                if stored.get(key) != value:
                    raise CheckpointError(
                        f"checkpoint {self.path} was made for a different run ({key}: {stored.get(key)!r} != "
                        f"{value!r}); {_hint(self.path)}")
            return True
        leftovers = [p.name for p in self.path.iterdir() if p.name != LOCK_FILE]
        if leftovers:
            raise CheckpointError(f"{self.path} is not empty and has no {RUN_FILE}; {_hint(self.path)}")
        atomic_write_bytes(run_path, _json_bytes(dict(identity, version=CHECKPOINT_VERSION)))
        return False

    def identity(self) -> dict[str, Any]:
        path = self.path / RUN_FILE
        if not path.exists():
            raise CheckpointError(f"{self.path}: no {RUN_FILE}; not a virnucpro checkpoint or shard directory")
        return json.loads(path.read_text())

    def lock(self) -> None:
        """Exclusive advisory lock for the coordinator's lifetime; the kernel drops it when the process dies, so a
        killed run never blocks its own retry."""
        handle = open(self.path / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            handle.close()
            raise CheckpointError(f"{self.path} is in use by another running embed-frames") from err
        self._lock_handle = handle

    def unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    # -- models ---------------------------------------------------------------------------------------------
    def register_model(self, kind: str, info: dict[str, Any]) -> None:
        """Record the model a kind's rows come from, or refuse a different one [CKPT-02: never mix models]."""
        folder = self.path / kind
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.json"
        if not path.exists():
            tmp = folder / f".model.json.tmp-{os.getpid()}"
            tmp.write_bytes(_json_bytes(info))
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)  # atomic create-if-absent: concurrent ranks agree on one record
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
            fsync_dir(folder)
        stored = json.loads(path.read_text())
        for key in ("fingerprint", "hidden_size"):
            if stored.get(key) != info.get(key):
                raise CheckpointError(
                    f"checkpoint {self.path}: {kind} model changed since the checkpoint was made "
                    f"({key}: {stored.get(key)!r} != {info.get(key)!r}); {_hint(self.path)}")

    def model_info(self, kind: str) -> dict[str, Any] | None:
        path = self.path / kind / "model.json"
        return json.loads(path.read_text()) if path.exists() else None

    # -- ranks ----------------------------------------------------------------------------------------------
    def rank_folder(self, kind: str, rank: int) -> Path:
        return self.path / kind / f"rank-{rank}"

    def rank_folders(self, kind: str) -> list[Path]:
        folder = self.path / kind
        return sorted(folder.glob("rank-*")) if folder.is_dir() else []

    def stored_plan(self, kind: str, rank: int) -> dict | None:
        path = self.rank_folder(kind, rank) / "plan.json"
        return json.loads(path.read_text()) if path.exists() else None

    def store_plan(self, kind: str, rank: int, plan: dict) -> None:
        folder = self.rank_folder(kind, rank)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "plan.json", _json_bytes(plan))

    def valid_parts(self, kind: str, *, verify: bool = True, remove_bad: bool = True) -> Iterator[Part]:
        for folder in self.rank_folders(kind):
            parts, problems = scan_parts(folder, verify=verify, remove_bad=remove_bad)
            for problem in problems:
                log.warning("event=checkpoint_part_discarded kind=%s folder=%s problem=%r", kind, folder.name,
                            problem)
            yield from parts

    def done_rows(self, kind: str, total: int, *, verify: bool = True) -> np.ndarray:
        """Boolean mask [total] of frame-table rows already embedded for `kind` (every rank folder, so a resume
        with a different device count still skips them). Duplicates never arise: ranks only embed rows not done."""
        done = np.zeros(total, dtype=bool)
        for part in self.valid_parts(kind, verify=verify):
            rows = read_part_rows(part)
            if len(rows) and rows.max() >= total:
                raise CheckpointError(f"{part.path}: row index beyond the {total} frames of this run")
            done[rows] = True
        return done

    # -- cached token lengths -------------------------------------------------------------------------------
    def load_lengths(self, fingerprint: str) -> dict[str, np.ndarray] | None:
        path = self.path / LENGTHS_FILE
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                if str(data["fingerprint"]) != fingerprint:
                    return None
                return {k: data[k] for k in data.files if k != "fingerprint"}
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def save_lengths(self, fingerprint: str, lengths: dict[str, np.ndarray]) -> None:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, fingerprint=np.array(fingerprint), **lengths)
        atomic_write_bytes(self.path / LENGTHS_FILE, buffer.getvalue())
