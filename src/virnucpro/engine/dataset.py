"""DataLoader side: CPU workers that read the frame table and tokenize, and never touch CUDA.

Workers are started with the "spawn" context [SAFE-02] (a forked child of a process that has a CUDA context is
unusable), hide every GPU (`CUDA_VISIBLE_DEVICES=""`) before any work and assert on every item that CUDA is not
initialised in them [SAFE-01, SAFE-04]. They return plain CPU tensors; pinning happens in the main process's
DataLoader pin thread [ARCH-04, SAFE-05].
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from virnucpro.engine.worklist import COLUMNS

_COLUMNS_CACHE: dict[tuple[str, str], object] = {}


class WorkerCudaError(RuntimeError):
    """A DataLoader worker found CUDA initialised or visible: a bug, never a user error."""


def assert_cpu_only_worker() -> None:
    """The worker-side guard [SAFE-04]; raises WorkerCudaError when the calling worker could reach a GPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") != "":
        raise WorkerCudaError(f"worker {os.getpid()}: CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}"
                              " (workers must hide all GPUs)")
    if torch.cuda.is_initialized():
        raise WorkerCudaError(f"worker {os.getpid()}: CUDA is initialised in a DataLoader worker")


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def worker_init(worker_id: int, parent: int | None = None) -> None:
    # Before anything can touch torch.cuda: with no visible device, even an accidental call cannot create a context.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    # Ctrl-C and SIGTERM reach the whole process group; only the main process decides how to stop (flush first).
    # Workers exit on their own when the main process goes away (DataLoader's parent watchdog).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A SIGKILLed parent leaves its workers blocked forever on a full result pipe (their exit joins the queue's
    # feeder thread); the DataLoader's own watchdog never gets to run. Leave as soon as the parent is gone.
    # `parent` is the pid that created the loader (captured there: a parent killed while this worker was still
    # starting would otherwise be missed, getppid() already being 1).
    parent = os.getppid() if parent is None else parent
    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
    torch.set_num_threads(1)
    assert_cpu_only_worker()


def _column(frames_path: str, column: str):
    """The frame-table column, read once per worker process (one contiguous polars Series)."""
    key = (frames_path, column)
    if key not in _COLUMNS_CACHE:
        import polars as pl

        _COLUMNS_CACHE[key] = pl.read_parquet(frames_path, columns=[column])[column].rechunk()
    return _COLUMNS_CACHE[key]


def _sequences(frames_path: str, column: str, rows: np.ndarray) -> list[str]:
    return _column(frames_path, column).gather(rows).to_list()


def _guard() -> dict:
    """Checked on every item a worker produces; the facts travel with the item so tests can see them."""
    in_worker = get_worker_info() is not None
    if in_worker:
        assert_cpu_only_worker()
    return {"worker_pid": os.getpid(), "in_worker": in_worker,
            "worker_cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "worker_cuda_initialized": torch.cuda.is_initialized()}


def _encode_all(tokenizer, sequences: list[str]) -> list[list[int]]:
    # A tokenizer may offer a batch call (the Rust BPE of DNABERT-S: one call instead of thousands); the protocol
    # only promises `encode`, which must give the same ids.
    batch = getattr(tokenizer, "encode_batch", None)
    return batch(sequences) if batch is not None else [tokenizer.encode(s) for s in sequences]


class LengthDataset(Dataset):
    """Item k: token lengths (one int32 array per model kind) of work-list rows block k; the planning pass."""

    def __init__(self, frames_path: Path, rows: np.ndarray, tokenizers: dict, block: int = 4096):
        self.frames_path, self.rows, self.tokenizers, self.block = str(frames_path), rows, tokenizers, block

    def __len__(self) -> int:
        return (len(self.rows) + self.block - 1) // self.block

    def __getitem__(self, k: int) -> dict:
        guard = _guard()
        rows = self.rows[k * self.block : (k + 1) * self.block]
        out = {"block": k}
        for kind, tokenizer in self.tokenizers.items():
            sequences = _sequences(self.frames_path, COLUMNS[kind], rows)
            out[kind] = np.fromiter((len(e) for e in _encode_all(tokenizer, sequences)), dtype=np.int32,
                                    count=len(rows))
        out.update(guard)
        return out


class PackDataset(Dataset):
    """Item k: pack k of a rank's plan, tokenized into one stream: input_ids int64 [T], cu_seqlens int32 [B+1],
    max_seqlen, rows int64 [B] (global frame-table rows, the order of the embeddings that come back)."""

    def __init__(self, frames_path: Path, kind: str, tokenizer, packs: list[np.ndarray], pack_ids: list[int]):
        self.frames_path, self.kind, self.tokenizer = str(frames_path), kind, tokenizer
        self.packs, self.pack_ids = packs, pack_ids

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, k: int) -> dict:
        start = time.perf_counter()
        guard = _guard()
        rows = self.packs[k]
        sequences = _sequences(self.frames_path, COLUMNS[self.kind], rows)
        encoded = _encode_all(self.tokenizer, sequences)
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        cu = np.zeros(len(encoded) + 1, dtype=np.int32)
        np.cumsum(lengths, out=cu[1:])
        ids = np.fromiter((t for e in encoded for t in e), dtype=np.int64, count=int(cu[-1]))
        return {
            "input_ids": torch.from_numpy(ids),
            "cu_seqlens": torch.from_numpy(cu),
            "max_seqlen": int(lengths.max()) if len(lengths) else 0,
            "rows": torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)),
            "kind": self.kind,
            "pack_id": self.pack_ids[k],
            "tokens": int(cu[-1]),
            "worker_seconds": time.perf_counter() - start,
            **guard,
        }


def make_loader(dataset: Dataset, *, workers: int, pin_memory: bool, prefetch_factor: int = 2) -> DataLoader:
    """batch_size=None: every item already is a batch (a pack). With workers, the spawn context [SAFE-02] and
    prefetch_factor packs per worker in flight [ARCH-03]; pin_memory pins in the main process's pin thread
    [ARCH-04]. in_order=True keeps pack order deterministic whatever the worker count."""
    kwargs: dict = {}
    if workers > 0:
        kwargs = {"multiprocessing_context": "spawn", "worker_init_fn": functools.partial(worker_init,
                                                                                      parent=os.getpid()),
                  "prefetch_factor": prefetch_factor, "persistent_workers": False}
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      **kwargs)
