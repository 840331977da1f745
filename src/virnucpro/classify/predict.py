"""Features -> per-frame scores -> per-chunk consensus -> per-sequence verdicts (docs/output.md, "predict").

Scores are computed in batches straight from the memory-mapped feature arrays, so RAM holds one batch of features
plus two float32 scores per frame. The tables are assembled with polars and written as TSV and Parquet, each under a
temporary name then renamed; `predict_summary.json` is written last and marks a complete output directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from virnucpro.classify.model import CLASS_NAMES, LoadedClassifier, load_classifier
from virnucpro.errors import InputError, ModelError

SequenceRule = Literal["majority", "any"]
SEQUENCE_RULES = ("majority", "any")

FRAME_TABLE = "frame_predictions"
CHUNK_TABLE = "chunk_predictions"
SEQUENCE_TABLE = "sequence_predictions"
UNREPORTED_TABLE = "unreported"
SUMMARY = "predict_summary.json"

FRAME_SUFFIX_LENGTH = 2  # "F1".."R3"


class _RowReader:
    """Reads row blocks of a (memory-mapped) 2-D array with plain file reads.

    Touching a memory map leaves every page read counted in the process's RSS; positioned reads go through the page
    cache instead, so scoring a 100 GB feature file needs only one batch of RAM. In-memory arrays are sliced.
    """

    def __init__(self, array: np.ndarray):
        self.array = array
        self.handle = None
        filename = getattr(array, "filename", None)
        if isinstance(array, np.memmap) and filename and array.flags.c_contiguous and array.ndim == 2:
            self.row_bytes = array.shape[1] * array.dtype.itemsize
            if array.offset + array.shape[0] * self.row_bytes == os.path.getsize(filename):
                self.handle = open(filename, "rb")

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.handle is None:
            return np.asarray(self.array[start:stop])
        count = (stop - start) * self.array.shape[1]
        self.handle.seek(self.array.offset + start * self.row_bytes)
        block = np.fromfile(self.handle, dtype=self.array.dtype, count=count)
        return block.reshape(stop - start, self.array.shape[1])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {device}: no CUDA device is available")
    return torch.device(device)


def score_features(classifier: LoadedClassifier, dnabert: np.ndarray, esm: np.ndarray, *,
                   batch_size: int = 4096, device: str = "cpu") -> np.ndarray:
    """Softmax scores [N, 2] (others, virus) of concat(dnabert, esm), read batch by batch."""
    if dnabert.shape[0] != esm.shape[0]:
        raise InputError(f"features: {dnabert.shape[0]} DNABERT-S rows but {esm.shape[0]} ESM rows")
    width = dnabert.shape[1] + esm.shape[1]
    if width != classifier.input_dim:
        raise ModelError(f"classifier expects {classifier.input_dim}-d features, got DNABERT-S {dnabert.shape[1]} + "
                         f"ESM {esm.shape[1]} = {width}; was it trained with another ESM-2 size?")
    count = dnabert.shape[0]
    scores = np.empty((count, 2), dtype=np.float32)
    target = resolve_device(device)
    model = classifier.model.eval().to(target)
    readers = [_RowReader(dnabert), _RowReader(esm)]
    try:
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            block = np.concatenate([reader.rows(start, stop).astype(np.float32, copy=False) for reader in readers],
                                   axis=1)
            if not np.isfinite(block).all():
                bad = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                raise InputError(f"features row {bad}: NaN or infinite value")
            scores[start:stop] = model.probabilities(torch.from_numpy(block).to(target)).cpu().numpy()
    finally:
        for reader in readers:
            reader.close()
    return scores


def _frame_table(frame_ids: list[str], scores: np.ndarray, frames: Path | None) -> pl.DataFrame:
    scored = pl.DataFrame({
        "frame_id": pl.Series(frame_ids, dtype=pl.Utf8),
        "score_others": scores[:, 0],
        "score_virus": scores[:, 1],
    })
    if scored["frame_id"].is_duplicated().any():
        first = scored.filter(pl.col("frame_id").is_duplicated())["frame_id"][0]
        raise InputError(f"features: frame id {first!r} appears more than once")
    # torch.max in the reference picks the first maximum, so a tie is "others".
    scored = scored.with_columns(
        pl.when(pl.col("score_virus") > pl.col("score_others")).then(pl.lit(CLASS_NAMES[1]))
        .otherwise(pl.lit(CLASS_NAMES[0])).alias("prediction"))
    if frames is None:
        chunk = pl.col("frame_id").str.slice(0, pl.col("frame_id").str.len_chars() - FRAME_SUFFIX_LENGTH)
        table = scored.with_columns(chunk.alias("chunk_id")).with_columns(
            pl.col("chunk_id").str.replace(r"_chunk_\d+$", "").alias("sequence_id"),
            pl.col("chunk_id").str.extract(r"_chunk_(\d+)$").cast(pl.Int32).alias("chunk_index"),
        )
        first_seen = table.select("sequence_id").unique(maintain_order=True).with_row_index("sequence_index")
        table = table.join(first_seen.with_columns(pl.col("sequence_index").cast(pl.Int64)), on="sequence_id",
                           how="left", maintain_order="left")
    else:
        layout = pl.scan_parquet(frames).select("frame_id", "sequence_id", "sequence_index", "chunk_id",
                                                "chunk_index").collect()
        table = layout.join(scored, on="frame_id", how="left", maintain_order="left")
        missing_scores = table.filter(pl.col("score_virus").is_null())
        if missing_scores.height:
            raise InputError(f"{frames}: {missing_scores.height} frames have no features "
                             f"(first: {missing_scores['frame_id'][0]!r}); embed all frames before predict")
        unknown = scored.join(layout.select("frame_id"), on="frame_id", how="anti")
        if unknown.height:
            raise InputError(f"features: {unknown.height} frame ids are not in {frames} "
                             f"(first: {unknown['frame_id'][0]!r}); features and frames come from different runs?")
    # The SPEC's column order first, then what the engine and the report use.
    return table.select("sequence_id", "frame_id", "chunk_id", "prediction", "score_others", "score_virus",
                        "chunk_index", "sequence_index")


def _chunk_table(frame_table: pl.DataFrame) -> pl.DataFrame:
    return (
        frame_table.group_by("chunk_id", maintain_order=True)
        .agg(
            pl.col("sequence_id").first(),
            pl.col("sequence_index").first(),
            pl.col("chunk_index").first(),
            pl.len().cast(pl.Int32).alias("n_frames"),
            (pl.col("prediction") == CLASS_NAMES[1]).sum().cast(pl.Int32).alias("n_virus_frames"),
            pl.col("score_others").max().alias("max_score_others"),
            pl.col("score_virus").max().alias("max_score_virus"),
        )
        .with_columns(
            pl.when(pl.col("max_score_virus") >= pl.col("max_score_others")).then(pl.lit(CLASS_NAMES[1]))
            .otherwise(pl.lit(CLASS_NAMES[0])).alias("prediction"))
        .select("sequence_id", "sequence_index", "chunk_id", "chunk_index", "n_frames", "n_virus_frames",
                "max_score_others", "max_score_virus", "prediction")
    )


def _sequence_table(frame_table: pl.DataFrame, chunk_table: pl.DataFrame, unreported: pl.DataFrame | None,
                    rule: SequenceRule) -> pl.DataFrame:
    from_chunks = chunk_table.group_by("sequence_id", maintain_order=True).agg(
        pl.col("sequence_index").first(),
        pl.len().cast(pl.Int32).alias("n_scored_chunks"),
        (pl.col("prediction") == CLASS_NAMES[1]).sum().cast(pl.Int32).alias("n_virus_chunks"),
        pl.col("max_score_virus").mean().alias("mean_chunk_score_virus"),
    )
    from_frames = frame_table.group_by("sequence_id", maintain_order=True).agg(
        pl.len().cast(pl.Int32).alias("n_frames"),
        (pl.col("prediction") == CLASS_NAMES[1]).sum().cast(pl.Int32).alias("n_virus_frames"),
        pl.col("score_virus").max().alias("max_score_virus"),
        pl.col("score_virus").mean().alias("mean_score_virus"),
    )
    table = from_chunks.join(from_frames, on="sequence_id", how="left", maintain_order="left")
    fraction = pl.col("n_virus_chunks") / pl.col("n_scored_chunks")
    is_virus = (fraction >= 0.5) if rule == "majority" else (pl.col("n_virus_chunks") > 0)
    table = table.with_columns(
        fraction.alias("virus_chunk_fraction"),
        pl.when(is_virus).then(pl.lit(CLASS_NAMES[1])).otherwise(pl.lit(CLASS_NAMES[0])).alias("verdict"),
        pl.lit(None, dtype=pl.Utf8).alias("no_frame_reason"),
    )
    if unreported is None:
        table = table.with_columns(pl.col("n_scored_chunks").alias("n_chunks"))
    else:
        unscored_chunks = (
            unreported.filter(pl.col("chunk_id").is_not_null())
            .group_by("sequence_id").agg(pl.len().cast(pl.Int32).alias("n_unscored_chunks"))
        )
        table = (
            table.join(unscored_chunks, on="sequence_id", how="left", maintain_order="left")
            .with_columns((pl.col("n_scored_chunks") + pl.col("n_unscored_chunks").fill_null(0))
                          .cast(pl.Int32).alias("n_chunks"))
            .drop("n_unscored_chunks")
        )
        scored_ids = table.select("sequence_id")
        without_frames = (
            unreported.join(scored_ids, on="sequence_id", how="anti")
            .group_by("sequence_id", maintain_order=True)
            .agg(
                pl.col("sequence_index").first(),
                pl.col("chunk_id").drop_nulls().len().cast(pl.Int32).alias("n_chunks"),
                pl.col("reason").unique(maintain_order=True).str.join(",").alias("no_frame_reason"),
            )
            .with_columns(
                pl.lit(0, dtype=pl.Int32).alias("n_scored_chunks"),
                pl.lit(0, dtype=pl.Int32).alias("n_virus_chunks"),
                pl.lit(0, dtype=pl.Int32).alias("n_frames"),
                pl.lit(0, dtype=pl.Int32).alias("n_virus_frames"),
                pl.lit("no_frames").alias("verdict"),
            )
        )
        table = pl.concat([table, without_frames], how="diagonal_relaxed").sort("sequence_index",
                                                                                 maintain_order=True)
    return table.select(
        "sequence_id", "sequence_index", "verdict", "n_chunks", "n_scored_chunks", "n_virus_chunks",
        "virus_chunk_fraction", "n_frames", "n_virus_frames", "max_score_virus", "mean_score_virus",
        "mean_chunk_score_virus", "no_frame_reason",
    )


def _write_table(table: pl.DataFrame, directory: Path, name: str) -> list[str]:
    written = []
    for suffix, write in ((".tsv", lambda df, p: df.write_csv(p, separator="\t")),
                          (".parquet", lambda df, p: df.write_parquet(p))):
        final = directory / f"{name}{suffix}"
        tmp = directory / f".{final.name}.tmp-{os.getpid()}"
        write(table, tmp)
        os.replace(tmp, final)
        written.append(final.name)
    return written


def run_predict(
    features: str | Path,
    classifier_path: str | Path,
    *,
    chunk_length: int,
    output: str | Path,
    frames: str | Path | None = None,
    unreported: str | Path | None = None,
    classifier_chunk_length: int | None = None,
    sequence_rule: SequenceRule = "majority",
    batch_size: int = 4096,
    device: str = "cpu",
) -> dict[str, Any]:
    from virnucpro.io.features import read_features
    from virnucpro.preprocess.prepare import default_unreported_path, read_table_metadata

    started = time.perf_counter()
    output = Path(output)
    classifier = load_classifier(classifier_path, classifier_chunk_length=classifier_chunk_length)
    if classifier.chunk_length != chunk_length:
        raise ModelError(f"{classifier_path}: classifier was trained on {classifier.chunk_length}-nt chunks, "
                         f"but --chunk-length is {chunk_length}; use the {chunk_length}_model classifier")
    frames_path = Path(frames) if frames is not None else None
    unreported_table = None
    if frames_path is not None:
        if not frames_path.is_file():
            raise InputError(f"{frames_path}: frame table not found")
        prepared_length = read_table_metadata(frames_path).get("virnucpro.chunk_length")
        if prepared_length is not None and int(prepared_length) != chunk_length:
            raise InputError(f"{frames_path}: frames were prepared with --chunk-length {prepared_length}, "
                             f"not {chunk_length}")
        unreported_path = Path(unreported) if unreported is not None else default_unreported_path(frames_path)
        if not unreported_path.is_file():
            raise InputError(f"{unreported_path}: unreported table of {frames_path} not found (pass --unreported)")
        unreported_table = pl.read_parquet(unreported_path)

    frame_ids, dnabert, esm = read_features(features)
    scores = score_features(classifier, dnabert, esm, batch_size=batch_size, device=device)
    frame_table = _frame_table(frame_ids, scores, frames_path)
    chunk_table = _chunk_table(frame_table)
    sequence_table = _sequence_table(frame_table, chunk_table, unreported_table, sequence_rule)

    output.mkdir(parents=True, exist_ok=True)
    (output / SUMMARY).unlink(missing_ok=True)  # the directory is incomplete until the summary is back
    files = []
    files += _write_table(frame_table.drop("sequence_index"), output, FRAME_TABLE)
    files += _write_table(chunk_table.drop("sequence_index"), output, CHUNK_TABLE)
    files += _write_table(sequence_table, output, SEQUENCE_TABLE)
    if unreported_table is not None:
        files += _write_table(unreported_table, output, UNREPORTED_TABLE)
    verdicts = sequence_table["verdict"].value_counts(sort=True)
    summary = {
        "features": str(features), "classifier": str(classifier_path), "classifier_format": classifier.source,
        "chunk_length": chunk_length, "frames": str(frames_path) if frames_path else None,
        "sequence_rule": sequence_rule, "device": str(resolve_device(device)), "n_frames": frame_table.height, "n_chunks": chunk_table.height,
        "n_sequences": sequence_table.height,
        "verdicts": dict(zip(verdicts["verdict"].to_list(), verdicts["count"].to_list())),
        "files": files, "seconds": round(time.perf_counter() - started, 3),
    }
    tmp = output / f".{SUMMARY}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, output / SUMMARY)
    return summary
