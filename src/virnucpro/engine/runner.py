"""The coordinator of `embed-frames`: work list, checkpoint directory, length pass, one process per device, then
aggregation.

    coordinator (never initialises CUDA when it spawns ranks [SAFE-03])
      |- load + fingerprint the frame table; open/verify the checkpoint dir; token lengths (DataLoader workers)
      |- done masks: every valid checkpoint part, verified (corrupt ones removed, to be recomputed)
      |- rank r on device r (spawned process; in-process when there is one device) [ARCH-01, GPU-01]
      |     for kind in (dnabert, esm2): load model, plan packs over its stride of the length-sorted list,
      |     skip finished packs, run the overlapped pipeline into rank-r checkpoint parts
      `- aggregate every part into the feature file (or, with --shard, publish the parts as a shard directory)

Signals: SIGTERM / SIGINT set a stop flag (forwarded to ranks): packs in flight finish, their rows are flushed to a
checkpoint part, and the command exits with 143 (SIGTERM) or 130 (SIGINT). Running the same command again resumes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from virnucpro.engine.batching import ModelShape, plan_packs, token_budget
from virnucpro.engine.checkpoint import CheckpointDir
from virnucpro.engine.dataset import LengthDataset, PackDataset, make_loader
from virnucpro.engine.models import open_encoder, open_tokenizer
from virnucpro.engine.pipeline import PartSink, run_pass
from virnucpro.engine.telemetry import PassStats, RunTelemetry
from virnucpro.engine.worklist import KINDS, WorkList, load_worklist, sorted_order, stride_shard
from virnucpro.errors import InputError, VirNucProError

log = logging.getLogger("virnucpro.engine")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXIT_SIGTERM, EXIT_SIGINT = 143, 130
LENGTH_PASS_MIN_ROWS = 50_000


class Interrupted(VirNucProError):
    """Stopped by a signal after flushing: the exit code says which (143 SIGTERM, 130 SIGINT)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class EmbedConfig:
    frames: Path
    models: dict[str, str]  # kind -> model folder or random:<preset>
    output: Path
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 10_000
    devices: str = "auto"
    dtype: str = "auto"
    workers: int = 2
    prefetch_factor: int = 2
    token_budget: int | None = None
    backend: str = "auto"
    telemetry: Path | None = None
    shard: tuple[int, int] | None = None
    overwrite: bool = False
    keep_checkpoint: bool = False
    progress: bool = True
    cpu_threads: int | None = None  # torch intra-op threads of each CPU device process (default: cores / devices)
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    @property
    def ckpt_path(self) -> Path:
        if self.checkpoint_dir is not None:
            return Path(self.checkpoint_dir)
        # A shard's output directory is its checkpoint: nothing to copy when it completes.
        return Path(self.output) if self.shard else Path(f"{self.output}.ckpt")


def parse_devices(text: str) -> list[str]:
    """"cpu", "cpu:N" (N CPU processes: the multi-device path without a GPU), "cuda" (every visible GPU),
    "cuda:0,2", "auto" (cuda if available else cpu). device_count() does not create a CUDA context."""
    text = text.strip()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return ["cpu"]
    if text.startswith("cpu:"):
        try:
            n = int(text[4:])
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(f"--devices {text!r}: expected cpu:N with N >= 1")
        return ["cpu"] * n
    if text == "cuda" or text.startswith("cuda:"):
        count = torch.cuda.device_count()
        if count == 0:
            raise InputError(f"--devices {text}: no CUDA device visible on this machine")
        if text == "cuda":
            return [f"cuda:{i}" for i in range(count)]
        try:
            ids = [int(x) for x in text[5:].split(",") if x.strip()]
        except ValueError as err:
            raise InputError(f"--devices {text!r}: expected cuda:0,1,...") from err
        bad = [i for i in ids if not 0 <= i < count]
        if bad or not ids or len(set(ids)) != len(ids):
            raise InputError(f"--devices {text!r}: {count} CUDA device(s) visible (0..{count - 1}), each once")
        return [f"cuda:{i}" for i in ids]
    raise InputError(f"--devices {text!r}: expected cpu, cpu:N, cuda, cuda:0,1,... or auto")


def resolve_dtype(dtype: str, devices: list[str]) -> str:
    if dtype == "auto":
        return "fp16" if devices[0].startswith("cuda") else "fp32"
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: choose from auto, {', '.join(DTYPES)}")
    return dtype


def configure_logging() -> None:
    root = logging.getLogger("virnucpro")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


# --------------------------------------------------------------------------------------------------- length pass

def token_lengths(cfg: EmbedConfig, worklist: WorkList, ckpt: CheckpointDir) -> dict[str, np.ndarray]:
    """Token length of every work-list row for each model (aligned with worklist.rows), computed by the DataLoader
    workers and cached in the checkpoint dir (planning only: rows are always re-tokenized for the model)."""
    cached = ckpt.load_lengths(worklist.fingerprint)
    if cached is not None and all(len(cached.get(k, ())) == len(worklist.rows) for k in KINDS):
        return cached
    tokenizers = {kind: open_tokenizer(kind, cfg.models[kind]) for kind in KINDS}
    dataset = LengthDataset(worklist.frames_path, worklist.rows, tokenizers)
    lengths = {kind: np.zeros(len(worklist.rows), dtype=np.int32) for kind in KINDS}
    # Starting spawned workers costs seconds (each imports torch): small work lists are tokenized in-process.
    workers = cfg.workers if len(worklist.rows) >= LENGTH_PASS_MIN_ROWS else 0
    for item in make_loader(dataset, workers=workers, pin_memory=False, prefetch_factor=cfg.prefetch_factor):
        start = item["block"] * dataset.block
        for kind in KINDS:
            lengths[kind][start : start + len(item[kind])] = item[kind]
    ckpt.save_lengths(worklist.fingerprint, lengths)
    return lengths


# --------------------------------------------------------------------------------------------------- one rank

@dataclass
class RankJob:
    cfg: EmbedConfig
    rank: int
    world: int
    device: str
    dtype: str
    rows: np.ndarray  # work-list rows
    lengths: dict[str, np.ndarray]  # aligned with rows
    done: dict[str, np.ndarray]  # kind -> bool [total]
    total: int


@dataclass
class _Pass:
    kind: str
    tokenizer: object
    encoder: object
    stats: PassStats
    todo: list  # [(pack number in the plan, rows)]
    done: np.ndarray
    partial: bool


def _plan_pass(job: RankJob, kind: str, device: torch.device, ckpt: CheckpointDir) -> _Pass:
    cfg = job.cfg
    stats = PassStats(kind=kind, rank=job.rank, device=str(device))
    by_row = np.zeros(job.total, dtype=np.int64)
    by_row[job.rows] = job.lengths[kind]
    mine = stride_shard(sorted_order(job.rows, job.lengths[kind]), job.rank, job.world)
    done = job.done[kind]
    tokenizer = open_tokenizer(kind, cfg.models[kind])
    # Loaded even when every row is done: the fingerprint check must refuse a changed model on any rerun.
    encoder = open_encoder(kind, cfg.models[kind], device=device, dtype=DTYPES[job.dtype], backend=cfg.backend)
    ckpt.register_model(kind, {"fingerprint": encoder.fingerprint, "hidden_size": encoder.hidden_size,
                               "model": str(cfg.models[kind])})
    if done[mine].all():
        return _Pass(kind, tokenizer, encoder, stats, [], done, False)
    stored = ckpt.stored_plan(kind, job.rank)
    if stored and stored.get("world") == job.world and cfg.token_budget in (None, stored["budget"]):
        # Same budget as the interrupted run: same packs, so finished packs are skipped whole and the resumed
        # numbers equal an uninterrupted run's.
        budget, source = stored["budget"], "resumed:" + stored["source"]
    else:
        budget, source = token_budget(ModelShape.of(encoder), device, max_tokens=tokenizer.max_tokens,
                                      requested=cfg.token_budget)
        ckpt.store_plan(kind, job.rank, {"budget": budget, "source": source, "world": job.world})
    stats.budget, stats.budget_source = budget, source
    bounds = plan_packs(by_row[mine], budget, tokenizer.max_tokens)
    packs = [mine[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
    todo = [(i, p) for i, p in enumerate(packs) if not done[p].all()]
    stats.skipped_packs = len(packs) - len(todo)
    stats.max_pack_sequences = max(len(p) for _, p in todo)
    return _Pass(kind, tokenizer, encoder, stats, todo, done, any(done[p].any() for _, p in todo))


class _Segments:
    """Splits one DataLoader stream (all DNABERT-S packs, then all ESM-2 packs) into one iterator per pass."""

    def __init__(self, iterator):
        self.iterator, self.pending = iterator, None

    def take(self, kind: str):
        while True:
            if self.pending is not None:
                item, self.pending = self.pending, None
            else:
                item = next(self.iterator, None)
            if item is None:
                return
            if item["kind"] != kind:
                self.pending = item
                return
            yield item


def run_rank(job: RankJob, report, stop: threading.Event) -> list[dict]:
    """Both model passes of one rank. `report(kind, n)` counts finished rows. Returns PassStats summaries.

    Both models are loaded and planned first, then ONE DataLoader serves the packs of both passes: its workers are
    spawned once per run, and they are already tokenizing ESM-2 packs while the DNABERT-S pass finishes, so the
    device never idles between the passes."""
    cfg = job.cfg
    device = torch.device(job.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the first CUDA call of this process [SAFE-03]
    elif cfg.cpu_threads or job.world > 1:
        # Oversubscribed OpenMP threads spin against each other (100x slower on a loaded 2-core box).
        torch.set_num_threads(cfg.cpu_threads or max(1, (os.cpu_count() or 1) // job.world))
    ckpt = CheckpointDir(cfg.ckpt_path)
    passes = [_plan_pass(job, kind, device, ckpt) for kind in KINDS]
    for p in passes:
        log.info("event=pass_planned kind=%s rank=%d device=%s budget=%d budget_source=%r todo_packs=%d "
                 "skipped_packs=%d todo_rows=%d", p.kind, job.rank, device, p.stats.budget,
                 p.stats.budget_source, len(p.todo), p.stats.skipped_packs, sum(len(r) for _, r in p.todo))
    datasets = [PackDataset(cfg.frames, p.kind, p.tokenizer, [r for _, r in p.todo], [i for i, _ in p.todo])
                for p in passes if p.todo]
    segments = None
    if datasets:
        loader = make_loader(ConcatDataset(datasets), workers=cfg.workers, pin_memory=device.type == "cuda",
                             prefetch_factor=cfg.prefetch_factor)
        segments = _Segments(iter(loader))
    summaries = []
    for p in passes:
        if p.todo and not stop.is_set():
            log.info("event=pass_start kind=%s rank=%d device=%s", p.kind, job.rank, device)
            sink = PartSink(ckpt, p.kind, job.rank, cfg.checkpoint_every, p.stats, p.done if p.partial else None,
                            meta={"fingerprint": p.encoder.fingerprint})
            try:
                run_pass(p.encoder, segments.take(p.kind), sink, p.stats,
                         max_pack_sequences=p.stats.max_pack_sequences, stop=stop,
                         progress=lambda n, kind=p.kind: report(kind, n))
            except torch.OutOfMemoryError as err:
                # Rows finished before the failure are already flushed (run_pass drains on the way out).
                raise VirNucProError(
                    f"{p.kind} on {device}: out of memory with a token budget of {p.stats.budget} "
                    f"({p.stats.budget_source}); rerun with a smaller --token-budget to resume ({err})") from err
            log.info("event=pass_end kind=%s rank=%d sequences=%d tokens=%d wall_s=%.2f interrupted=%s", p.kind,
                     job.rank, p.stats.sequences, p.stats.tokens, p.stats.wall_s, p.stats.interrupted)
        summaries.append(p.stats.summary())
        p.encoder = None  # free this model's device memory before the next pass's activations need it
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return summaries


def _rank_entry(job: RankJob, messages) -> None:
    """Body of a spawned rank process: signals set the stop flag; results and errors go back through `messages`."""
    configure_logging()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        summaries = run_rank(job, lambda kind, n: messages.put(("progress", kind, n)), stop)
        messages.put(("stats", job.rank, summaries))
    except VirNucProError as err:
        messages.put(("error", job.rank, type(err).__name__, err.exit_code, str(err)))
        sys.exit(err.exit_code)
    except BaseException as err:
        traceback.print_exc()
        messages.put(("error", job.rank, type(err).__name__, 1, f"{type(err).__name__}: {err}"))
        sys.exit(1)


# --------------------------------------------------------------------------------------------------- coordinator

class _Progress:
    def __init__(self, enabled: bool, totals: dict[str, int], done: dict[str, int]):
        self.bar = None
        self.tasks = {}
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            for kind in KINDS:
                self.tasks[kind] = self.bar.add_task(f"embed {kind}", total=totals[kind], completed=done[kind])
            self.bar.start()

    def advance(self, kind: str, n: int) -> None:
        if self.bar is not None:
            self.bar.update(self.tasks[kind], advance=n)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _install_signals(stop: threading.Event, received: list, children: list) -> dict:
    def handler(signum, _frame):
        received.append(signum)
        stop.set()
        for proc in children:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _finished_output(cfg: EmbedConfig, worklist: WorkList) -> bool:
    """True when FEATURES is already a sealed feature file of this very frame table (a rerun after success)."""
    from virnucpro.io.bundle import read_manifest
    from virnucpro.io.features import FEATURES_FORMAT

    if cfg.shard or not (Path(cfg.output) / "manifest.json").exists():
        return False
    try:
        manifest = read_manifest(cfg.output, fmt=FEATURES_FORMAT)
    except InputError:
        return False
    metadata = manifest.get("metadata", {})
    same_models = all(metadata.get("models", {}).get(kind, {}).get("source") == str(cfg.models[kind])
                      for kind in KINDS)
    return metadata.get("worklist_fingerprint") == worklist.fingerprint and same_models and \
        metadata.get("dtype") == resolve_dtype(cfg.dtype, parse_devices(cfg.devices)) and not cfg.ckpt_path.exists()


def _publish_shard(ckpt: Path, output: Path) -> None:
    """A finished shard's checkpoint becomes the shard directory OUTPUT (hard links where the filesystem allows,
    else copies), assembled under a temp name and renamed: OUTPUT is complete or absent."""
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for source in ckpt.rglob("*"):
        if source.is_dir() or source.name in ("lock", "lengths.npz") or source.name.startswith("."):
            continue
        target = tmp / source.relative_to(ckpt)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another filesystem (checkpoint on scratch, output in the task dir)
            shutil.copy2(source, target)
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)


def embed_frames(cfg: EmbedConfig) -> dict:
    """Run (or resume) the whole embed-frames command; returns the telemetry dict."""
    from virnucpro.engine.aggregate import aggregate_checkpoints

    configure_logging()
    wall = time.perf_counter()
    devices = parse_devices(cfg.devices)
    dtype = resolve_dtype(cfg.dtype, devices)
    if cfg.checkpoint_every < 1:
        raise InputError("--checkpoint-every must be >= 1")
    worklist = load_worklist(cfg.frames, cfg.shard)
    telemetry = RunTelemetry(command=cfg.command, devices=devices, dtype=dtype, workers=cfg.workers,
                             frames=len(worklist.rows))
    if not cfg.overwrite and _finished_output(cfg, worklist):
        log.info("event=already_complete output=%s", cfg.output)
        return telemetry.to_json() | {"already_complete": True}
    for stale in cfg.ckpt_path.parent.glob(f".{cfg.ckpt_path.name}.removing-*"):
        shutil.rmtree(stale, ignore_errors=True)  # a finished run killed while deleting its checkpoint
    ckpt = CheckpointDir(cfg.ckpt_path)
    identity = {"worklist_fingerprint": worklist.fingerprint, "frames": worklist.total, "dtype": dtype,
                "shard": list(cfg.shard) if cfg.shard else None}
    resumed = ckpt.open(identity, overwrite=cfg.overwrite)
    try:
        t0 = time.perf_counter()
        lengths = token_lengths(cfg, worklist, ckpt)
        telemetry.length_pass_s = time.perf_counter() - t0
        done = {kind: ckpt.done_rows(kind, worklist.total) for kind in KINDS}
        done_counts = {kind: int(done[kind][worklist.rows].sum()) for kind in KINDS}
        log.info("event=run_start frames=%d devices=%s dtype=%s resumed=%s done=%s checkpoint=%s",
                 len(worklist.rows), ",".join(devices), dtype, resumed, done_counts, ckpt.path)
        progress = _Progress(cfg.progress and sys.stderr.isatty(), {k: len(worklist.rows) for k in KINDS},
                             done_counts)
        stop = threading.Event()
        received: list[int] = []
        children: list = []
        previous = _install_signals(stop, received, children)
        try:
            jobs = [RankJob(cfg, r, len(devices), dev, dtype, worklist.rows, lengths, done, worklist.total)
                    for r, dev in enumerate(devices)]
            if len(jobs) == 1:
                telemetry.passes = run_rank(jobs[0], progress.advance, stop)
            else:
                telemetry.passes = _run_spawned(jobs, children, progress, stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            progress.stop()
        if received or stop.is_set() or any(p["interrupted"] for p in telemetry.passes):
            signum = received[0] if received else signal.SIGTERM
            code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
            raise Interrupted(f"interrupted by {signal.Signals(signum).name}: finished rows are checkpointed in "
                              f"{ckpt.path}; run the same command again to resume", code)
        t0 = time.perf_counter()
        if cfg.shard is None:
            aggregate_checkpoints(cfg.frames, [ckpt.path], cfg.output, worklist=worklist)
        elif ckpt.path.resolve() != Path(cfg.output).resolve():
            _publish_shard(ckpt.path, Path(cfg.output))
        telemetry.aggregate_s = time.perf_counter() - t0
    finally:
        ckpt.unlock()
    if ckpt.path.resolve() != Path(cfg.output).resolve() and not cfg.keep_checkpoint:
        # Rename first (atomic), then delete: a kill in the middle never leaves a half-deleted checkpoint that a
        # rerun would take for a foreign directory.
        trash = ckpt.path.with_name(f".{ckpt.path.name}.removing-{os.getpid()}")
        os.replace(ckpt.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    telemetry.wall_s = time.perf_counter() - wall
    return telemetry.to_json()


def _run_spawned(jobs: list[RankJob], children: list, progress: _Progress, stop: threading.Event) -> list[dict]:
    """One spawned process per device [GPU-01]; the coordinator itself never touches CUDA [SAFE-03]."""
    context = mp.get_context("spawn")
    messages = context.Queue()
    for job in jobs:
        proc = context.Process(target=_rank_entry, args=(job, messages), name=f"rank-{job.rank}", daemon=False)
        proc.start()
        children.append(proc)
    summaries: dict[int, list] = {}
    errors: list[tuple] = []

    def handle(message) -> None:
        if message[0] == "progress":
            progress.advance(message[1], message[2])
        elif message[0] == "stats":
            summaries[message[1]] = message[2]
        elif message[0] == "error":
            errors.append(message)

    while any(p.is_alive() for p in children):
        try:
            handle(messages.get(timeout=0.2))
        except queue.Empty:
            pass
        failed = [p for p in children if p.exitcode not in (None, 0)]
        if failed and not stop.is_set():
            # One rank failed: stop the others (they flush) instead of letting them run for hours in vain.
            stop.set()
            for proc in children:
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGTERM)
    for proc in children:
        proc.join()
    while True:
        try:
            handle(messages.get(timeout=0.1))
        except queue.Empty:
            break
    if errors:
        _, rank, name, code, message = errors[0]
        import virnucpro.errors

        exc = getattr(virnucpro.errors, name, None)
        if isinstance(exc, type) and issubclass(exc, VirNucProError):
            raise exc(message)
        err = VirNucProError(f"rank {rank} ({jobs[rank].device}): {message}")
        err.exit_code = code if code else 1
        raise err
    dead = [(j.rank, p.exitcode) for j, p in zip(jobs, children) if p.exitcode != 0 or j.rank not in summaries]
    if dead:
        rank, code = dead[0]
        raise VirNucProError(f"rank {rank} ({jobs[rank].device}) exited with code {code} without a result "
                             "(killed? out of memory?); finished rows are checkpointed, run again to resume")
    return [s for rank in sorted(summaries) for s in summaries[rank]]
