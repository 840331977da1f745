"""Aggregation [GPU-03]: checkpoint parts of any number of ranks and shard directories -> one feature file.

Every part is re-verified (size, count, sha256), every expected frame must be present exactly once per model,
dims must match the model record, and no NaN/Inf may pass. Rows are scattered straight into the memory-mapped
arrays of `features_writer` part by part, so aggregation needs the RAM of one part, not of the whole output.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from virnucpro.engine.checkpoint import CheckpointDir, read_part
from virnucpro.engine.worklist import KINDS, WorkList, load_worklist
from virnucpro.errors import CheckpointError, InputError
from virnucpro.io.features import features_writer

log = logging.getLogger("virnucpro.engine.aggregate")

# Array name of each model in the feature file.
FEATURE_NAMES = {"dnabert": "dnabert", "esm2": "esm"}


def _ids_excerpt(ids: list[str], rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(ids[int(r)] for r in rows[:limit])
    return shown + (f" ... ({len(rows)} in all)" if len(rows) > limit else "")


def aggregate_checkpoints(frames: str | Path, sources: list[str | Path], output: str | Path, *,
                          worklist: WorkList | None = None) -> Path:
    """Write the feature file `output` (ids = frame ids in frame-table order) from checkpoint/shard directories."""
    worklist = worklist if worklist is not None and worklist.shard is None else load_worklist(frames)
    if not sources:
        raise InputError("aggregate: no checkpoint or shard directories given")
    dirs = [CheckpointDir(s) for s in sources]
    dtype = None
    models: dict[str, dict] = {}
    for d in dirs:
        identity = d.identity()
        if identity.get("worklist_fingerprint") != worklist.fingerprint:
            raise CheckpointError(f"{d.path} was made from a different frame table than {frames}")
        if dtype is not None and identity.get("dtype") != dtype:
            raise CheckpointError(f"{d.path}: dtype {identity.get('dtype')} differs from {dtype} of the others")
        dtype = identity.get("dtype")
        for kind in KINDS:
            info = d.model_info(kind)
            if info is None:
                continue
            if kind in models and models[kind]["fingerprint"] != info["fingerprint"]:
                raise CheckpointError(f"{d.path}: {kind} rows come from another model than those of the other "
                                      "directories")
            models.setdefault(kind, info)
    missing_models = [k for k in KINDS if k not in models]
    if missing_models:
        raise CheckpointError(f"no {', '.join(missing_models)} rows in {', '.join(str(s) for s in sources)}")
    total = worklist.total
    dims = {kind: int(models[kind]["hidden_size"]) for kind in KINDS}
    metadata = {
        "worklist_fingerprint": worklist.fingerprint,
        "dtype": dtype,
        "models": {kind: {"fingerprint": models[kind]["fingerprint"], "source": models[kind].get("model")}
                   for kind in KINDS},
        "frames": str(frames),
    }
    for stale in Path(output).glob(".*.tmp-*") if Path(output).is_dir() else ():
        stale.unlink(missing_ok=True)  # arrays of an aggregation that was killed: never renamed, never sealed
    writer = features_writer(output, total, dims["dnabert"], dims["esm2"], metadata=metadata)
    for kind in KINDS:
        seen = np.zeros(total, dtype=bool)
        for d in dirs:
            # Read-only here: aggregation never deletes; a bad part is an error (the embed run would redo it).
            for part in d.valid_parts(kind, verify=False, remove_bad=False):
                rows, emb = read_part(part, verify=True)
                if emb.shape[1] != dims[kind]:
                    raise CheckpointError(f"{part.path}: dim {emb.shape[1]}, model {kind} has {dims[kind]}")
                if len(rows) and (rows.min() < 0 or rows.max() >= total):
                    raise CheckpointError(f"{part.path}: row index outside the {total} frames")
                if len(np.unique(rows)) != len(rows) or seen[rows].any():
                    dup = rows[seen[rows]] if seen[rows].any() else rows
                    raise CheckpointError(f"{part.path}: {kind} rows present more than once: "
                                          f"{_ids_excerpt(worklist.frame_ids, dup)}")
                finite = np.isfinite(emb).all(axis=1)
                if not finite.all():
                    raise CheckpointError(f"{part.path}: NaN/Inf in {kind} embeddings of "
                                          f"{_ids_excerpt(worklist.frame_ids, rows[~finite])}")
                seen[rows] = True
                writer.write_at(rows, {FEATURE_NAMES[kind]: emb})
        if not seen.all():
            absent = np.flatnonzero(~seen)
            raise CheckpointError(f"{kind} embeddings missing for {len(absent)} of {total} frames: "
                                  f"{_ids_excerpt(worklist.frame_ids, absent)} (unfinished run or missing shard)")
    path = writer.finalize(worklist.frame_ids)
    log.info("event=aggregate_done output=%s frames=%d sources=%d", path, total, len(dirs))
    return path
