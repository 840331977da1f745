"""Run telemetry [PERF-05]: throughput, packing efficiency, per-stage times, waits and GPU busy fraction.

GPU busy comes from NVML (`nvidia-ml-py`, imported as `pynvml`) sampled by a thread every 50 ms: the fraction of
each sample period in which a kernel ran on the device. Without NVML it falls back to `torch.cuda.utilization`
(which itself needs NVML or amdsmi), else reports null with the reason, never a made-up number.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class PassStats:
    """One model pass on one rank. Times in seconds; waits are wall time the main loop spent blocked."""

    kind: str
    rank: int
    device: str
    budget: int = 0
    budget_source: str = ""
    sequences: int = 0
    tokens: int = 0
    packs: int = 0
    skipped_packs: int = 0
    outlier_packs: int = 0
    wall_s: float = 0.0
    wait_input_s: float = 0.0  # main loop blocked on the DataLoader (tokenization not keeping up)
    wait_output_s: float = 0.0  # main loop blocked on a free output buffer / writer queue (backpressure)
    worker_tokenize_s: float = 0.0  # sum over packs of worker time (parallel across workers)
    h2d_s: float = 0.0  # GPU time of host-to-device copies (CUDA events), 0 on CPU
    compute_s: float = 0.0  # GPU (or CPU) time of embed_packed
    d2h_s: float = 0.0
    writer_s: float = 0.0  # writer thread: waiting for D2H events, copying rows, writing parts
    checkpoint_s: float = 0.0  # of which writing checkpoint parts
    checkpoint_parts: int = 0
    max_pack_sequences: int = 0
    # CUDA event timeline (no NVML needed): compute-stream occupancy from its first to its last kernel of the pass,
    # and how much copy time ran concurrently with compute (H2D of pack N+1 / D2H of pack N-1 during pack N).
    compute_stream_busy: float | None = None
    compute_span_s: float = 0.0
    h2d_overlap_s: float = 0.0
    d2h_overlap_s: float = 0.0
    gpu_busy: float | None = None
    gpu_busy_source: str | None = None
    gpu_busy_samples: int = 0
    interrupted: bool = False

    def summary(self) -> dict:
        out = asdict(self)
        wall = max(self.wall_s, 1e-9)
        out["tokens_per_s"] = self.tokens / wall
        out["sequences_per_s"] = self.sequences / wall
        done_packs = self.packs
        out["packing_efficiency"] = (self.tokens / (done_packs * self.budget)) if done_packs and self.budget else None
        return out


class GpuBusySampler:
    """Samples the device's busy fraction in a thread between start() and stop()."""

    def __init__(self, device: torch.device, period_s: float = 0.05):
        self.device, self.period_s = device, period_s
        self.samples: list[float] = []
        self.source: str | None = None
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = None

    def _nvml_reader(self):
        try:
            import pynvml
        except ImportError:
            return None, "nvidia-ml-py (pynvml) not installed"
        try:
            pynvml.nvmlInit()
            index = self._physical_index()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as err:  # NVML raises its own error classes; any failure means no reading
            return None, f"NVML unavailable: {err}"
        return (lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0), None

    def _physical_index(self) -> int:
        # NVML numbers devices physically; CUDA_VISIBLE_DEVICES may renumber them for this process.
        index = self.device.index or 0
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            entries = [v.strip() for v in visible.split(",") if v.strip()]
            if index < len(entries) and entries[index].isdigit():
                return int(entries[index])
        return index

    def start(self) -> "GpuBusySampler":
        if self.device.type != "cuda":
            self.reason = "not a CUDA device"
            return self
        read, reason = self._nvml_reader()
        if read is not None:
            self.source = "nvml"
        else:
            try:
                torch.cuda.utilization(self.device)
                read = lambda: torch.cuda.utilization(self.device) / 100.0  # noqa: E731
                self.source = "torch.cuda.utilization"
            except Exception as err:  # needs pynvml/amdsmi itself
                self.reason = f"{reason}; torch.cuda.utilization failed: {err}"
                return self
        self._read = read
        self._thread = threading.Thread(target=self._run, name="gpu-busy-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.samples.append(float(self._read()))
            except Exception as err:  # a failing sensor must not kill the run
                self.reason = f"sampling failed: {err}"
                return

    def stop(self) -> tuple[float | None, str | None, int]:
        """(mean busy fraction or None, source or the reason it is missing, sample count)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.samples:
            return None, self.reason or "no samples (pass too short)", 0
        return sum(self.samples) / len(self.samples), self.source, len(self.samples)


@dataclass
class RunTelemetry:
    command: list[str]
    devices: list[str]
    dtype: str
    workers: int
    started_at: float = field(default_factory=time.time)
    wall_s: float = 0.0
    length_pass_s: float = 0.0
    aggregate_s: float = 0.0
    frames: int = 0
    passes: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        out = asdict(self)
        per_kind: dict[str, dict] = {}
        for p in self.passes:
            k = per_kind.setdefault(p["kind"], {"sequences": 0, "tokens": 0, "wall_s": 0.0, "packs": 0,
                                                "capacity": 0, "gpu_busy": [], "stream_busy": [], "h2d_s": 0.0,
                                                "h2d_overlap_s": 0.0})
            k["h2d_s"] += p["h2d_s"]
            k["h2d_overlap_s"] += p["h2d_overlap_s"]
            if p["compute_stream_busy"] is not None:
                k["stream_busy"].append(p["compute_stream_busy"])
            k["sequences"] += p["sequences"]
            k["tokens"] += p["tokens"]
            k["packs"] += p["packs"]
            k["capacity"] += p["packs"] * p["budget"]
            k["wall_s"] = max(k["wall_s"], p["wall_s"])  # ranks run concurrently
            if p["gpu_busy"] is not None:
                k["gpu_busy"].append(p["gpu_busy"])
        for k in per_kind.values():
            wall = max(k["wall_s"], 1e-9)
            k["tokens_per_s"] = k["tokens"] / wall
            k["sequences_per_s"] = k["sequences"] / wall
            k["packing_efficiency"] = k["tokens"] / k["capacity"] if k["capacity"] else None
            busy = k.pop("gpu_busy")
            k["gpu_busy"] = sum(busy) / len(busy) if busy else None
            stream = k.pop("stream_busy")
            k["compute_stream_busy"] = sum(stream) / len(stream) if stream else None
            h2d, overlap = k.pop("h2d_s"), k.pop("h2d_overlap_s")
            k["h2d_overlap_fraction"] = overlap / h2d if h2d > 0 else None
            k.pop("capacity")
        out["per_model"] = per_kind
        return out
