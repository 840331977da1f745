"""One model pass on one device: packs in, pooled embeddings out to checkpoint parts, with stages overlapped.

On CUDA, three streams and events, no device-wide synchronize and no `.item()` in the loop [ARCH-05, ARCH-06]:

    copy stream     H2D of pack N+1 (non_blocking from pinned memory)        --event h2d_done-->
    compute stream  waits h2d_done, embed_packed(pack N)                      --event compute_done-->
    d2h stream      waits compute_done, copies pack N-1's embeddings into a pinned output buffer --event d2h_done-->
    writer thread   waits d2h_done (that event only), copies rows out, returns the buffer, writes checkpoint parts

The main thread only enqueues work; it blocks in exactly two places, both measured: waiting for the DataLoader's
next pack (input starvation) and waiting for a free pinned output buffer (the writer is behind: backpressure
[ARCH-08]). Output buffers are sized to the largest pack of the plan x hidden size [ARCH-07]; NUM_BUFFERS of them
bound how many packs are in flight. On CPU the same loop runs without streams.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from virnucpro.engine.checkpoint import CheckpointDir, next_part_number, write_part
from virnucpro.engine.telemetry import GpuBusySampler, PassStats

log = logging.getLogger("virnucpro.engine.pipeline")

# Pinned output buffers (= packs in flight after compute): one being filled by D2H, one being drained by the writer,
# one spare so compute of the next pack never waits on a slow writer for a single pack.
NUM_BUFFERS = 3


class PartSink:
    """Accumulates finished rows and writes a checkpoint part every `every` rows [CKPT-01] (and on close)."""

    def __init__(self, ckpt: CheckpointDir, kind: str, rank: int, every: int, stats: PassStats,
                 done: np.ndarray | None = None, meta: dict | None = None):
        self.folder = ckpt.rank_folder(kind, rank)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.number = next_part_number(self.folder)
        self.every, self.stats, self.done = every, stats, done
        self.meta = dict(meta or {}, kind=kind, rank=rank)
        self._rows: list[np.ndarray] = []
        self._embs: list[np.ndarray] = []
        self._pending = 0

    def add(self, rows: np.ndarray, emb: np.ndarray) -> int:
        if self.done is not None:
            # Only a pack planned under another device count can mix done and new rows: keep the new ones only,
            # so no row is ever stored twice.
            keep = ~self.done[rows]
            if not keep.all():
                rows, emb = rows[keep], emb[keep]
        self._rows.append(rows)
        self._embs.append(emb)
        self._pending += len(rows)
        if self._pending >= self.every:
            self.flush()
        return len(rows)

    def flush(self) -> None:
        if not self._pending:
            return
        start = time.perf_counter()
        write_part(self.folder, self.number, np.concatenate(self._rows), np.concatenate(self._embs), self.meta)
        self.number += 1
        self._rows, self._embs, self._pending = [], [], 0
        self.stats.checkpoint_s += time.perf_counter() - start
        self.stats.checkpoint_parts += 1


@dataclass
class _InFlight:
    batch: dict  # keeps the pinned input alive until its copy has certainly finished
    rows: np.ndarray
    output: torch.Tensor  # pinned host buffer (CUDA) or the embeddings themselves (CPU)
    count: int
    events: tuple | None  # (h2d_start, h2d_end, compute_start, compute_end, d2h_start, d2h_end) on CUDA
    compute_s: float = 0.0


class _Writer(threading.Thread):
    def __init__(self, sink: PartSink, stats: PassStats, free: queue.Queue | None, progress: Callable[[int], None]):
        super().__init__(name="embedding-writer", daemon=True)
        # Bounded: when the writer falls behind, put() blocks the main loop (backpressure), memory stays flat.
        self.inbox: queue.Queue = queue.Queue(maxsize=NUM_BUFFERS)
        self.sink, self.stats, self.free, self.progress = sink, stats, free, progress
        self.error: BaseException | None = None
        self.base = None  # CUDA event recorded at pass start: the origin of the event timeline
        self._first_c0: float | None = None
        self._prev: tuple[float, float, float, float] | None = None  # previous pack's compute and D2H intervals

    def run(self) -> None:
        while (item := self.inbox.get()) is not None:
            if self.error is not None:
                self._release(item)  # keep draining so the main loop never blocks on a dead writer
                continue
            try:
                self._handle(item)
            except BaseException as err:  # surfaced by the main loop after the drain
                self.error = err
                self._release(item)
        if self.error is None:
            start = time.perf_counter()
            try:
                self.sink.flush()
            except BaseException as err:
                self.error = err
            self.stats.writer_s += time.perf_counter() - start

    def _release(self, item: _InFlight) -> None:
        if item.events is not None and item.output is not None:
            item.events[5].synchronize()
            self.free.put(item.output)
            item.output = None

    def _timeline(self, h0: float, h1: float, c0: float, c1: float, d0: float, d1: float) -> None:
        """Stage times and overlaps from one pack's events, all on the pass's common timeline (seconds)."""
        stats = self.stats
        stats.h2d_s += h1 - h0
        stats.compute_s += c1 - c0
        stats.d2h_s += d1 - d0
        if self._first_c0 is None:
            self._first_c0 = c0
        if self._prev is not None:
            prev_c0, prev_c1, prev_d0, prev_d1 = self._prev
            stats.h2d_overlap_s += max(0.0, min(h1, prev_c1) - max(h0, prev_c0))
            stats.d2h_overlap_s += max(0.0, min(prev_d1, c1) - max(prev_d0, c0))
        self._prev = (c0, c1, d0, d1)
        stats.compute_span_s = c1 - self._first_c0
        if stats.compute_span_s > 0:
            stats.compute_stream_busy = stats.compute_s / stats.compute_span_s

    def _handle(self, item: _InFlight) -> None:
        start = time.perf_counter()
        if item.events is not None:
            item.events[5].synchronize()  # this pack's D2H only; the GPU keeps working on the next packs
            emb = item.output[: item.count].numpy().copy()
            self._release(item)
            self._timeline(*(self.base.elapsed_time(e) / 1e3 for e in item.events))
        else:
            emb = item.output.numpy()
            self.stats.compute_s += item.compute_s
        item.batch = None
        written = self.sink.add(item.rows, emb)
        self.stats.writer_s += time.perf_counter() - start
        self.progress(written)


def run_pass(encoder, batches: Iterable[dict], sink: PartSink, stats: PassStats, *, max_pack_sequences: int,
             stop: threading.Event, progress: Callable[[int], None] = lambda n: None) -> PassStats:
    """Embed every pack of `batches` with `encoder`, rows to `sink`. Returns when the packs are exhausted or `stop`
    is set (then the packs already started are finished and flushed: nothing computed is lost)."""
    device = encoder.device
    cuda = device.type == "cuda"
    free: queue.Queue | None = None
    if cuda:
        free = queue.Queue()
        for _ in range(NUM_BUFFERS):
            free.put(torch.empty((max(max_pack_sequences, 1), encoder.hidden_size), dtype=torch.float32,
                                 pin_memory=True))
        copy_stream, compute_stream, d2h_stream = (torch.cuda.Stream(device) for _ in range(3))
    writer = _Writer(sink, stats, free, progress)
    if cuda:
        writer.base = torch.cuda.Event(enable_timing=True)
        writer.base.record()
    writer.start()
    sampler = GpuBusySampler(device).start()
    start = time.perf_counter()
    iterator = iter(batches)
    try:
        with torch.inference_mode():
            while not stop.is_set() and writer.error is None:
                t0 = time.perf_counter()
                batch = next(iterator, None)
                stats.wait_input_s += time.perf_counter() - t0
                if batch is None:
                    break
                rows = batch["rows"].numpy()
                count = len(rows)
                stats.worker_tokenize_s += batch["worker_seconds"]
                if cuda:
                    t0 = time.perf_counter()
                    out_host = free.get()  # blocks only when NUM_BUFFERS packs wait for the writer
                    stats.wait_output_s += time.perf_counter() - t0
                    events = tuple(torch.cuda.Event(enable_timing=True) for _ in range(6))
                    with torch.cuda.stream(copy_stream):
                        events[0].record(copy_stream)
                        ids = batch["input_ids"].to(device, non_blocking=True)
                        cu = batch["cu_seqlens"].to(device, non_blocking=True)
                        events[1].record(copy_stream)
                    compute_stream.wait_event(events[1])
                    with torch.cuda.stream(compute_stream):
                        # Tensors born on the copy stream and used here: the allocator must not recycle them until
                        # the compute stream is done with them.
                        ids.record_stream(compute_stream)
                        cu.record_stream(compute_stream)
                        events[2].record(compute_stream)
                        emb = encoder.embed_packed(ids, cu, batch["max_seqlen"])
                        events[3].record(compute_stream)
                    d2h_stream.wait_event(events[3])
                    with torch.cuda.stream(d2h_stream):
                        emb.record_stream(d2h_stream)
                        events[4].record(d2h_stream)
                        out_host[:count].copy_(emb, non_blocking=True)
                        events[5].record(d2h_stream)
                    item = _InFlight(batch, rows, out_host, count, events)
                else:
                    t0 = time.perf_counter()
                    emb = encoder.embed_packed(batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"])
                    item = _InFlight(batch, rows, emb.float(), count, None, time.perf_counter() - t0)
                t0 = time.perf_counter()
                writer.inbox.put(item)
                stats.wait_output_s += time.perf_counter() - t0
                stats.packs += 1
                stats.tokens += batch["tokens"]
                stats.sequences += count
                if count == 1 and batch["tokens"] > stats.budget:
                    stats.outlier_packs += 1
    finally:
        # Drain: packs already on the GPU finish and are flushed before we return (SIGTERM path included).
        writer.inbox.put(None)
        writer.join()
        stats.wall_s += time.perf_counter() - start
        stats.gpu_busy, stats.gpu_busy_source, stats.gpu_busy_samples = sampler.stop()
        stats.interrupted = stop.is_set()
        del iterator
    if writer.error is not None:
        raise writer.error
    return stats
