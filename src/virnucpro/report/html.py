"""The run report: one self-contained HTML page (plots embedded as PNG) plus the same figures as JSON.

Inputs are the files the pipeline already publishes: the `predict` output directory, `prepare --summary` JSON and the
`embed-frames` telemetry JSON of every shard. Nothing is recomputed from features.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from virnucpro import __version__
from virnucpro.errors import InputError

TOP_SEQUENCES = 25
STAGES = ("wait_input_s", "h2d_s", "compute_s", "d2h_s", "wait_output_s")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None


def _read_table(directory: Path, name: str) -> pl.DataFrame:
    path = directory / f"{name}.parquet"
    if not path.is_file():
        raise InputError(f"{path}: not found (is {directory} a `virnucpro predict` output directory?)")
    return pl.read_parquet(path)


def collect_report_data(predictions: Path, prepare_summary: Path | None, telemetry: list[Path]) -> dict[str, Any]:
    predictions = Path(predictions)
    summary_path = predictions / "predict_summary.json"
    if not summary_path.is_file():
        raise InputError(f"{summary_path}: not found; the predict step did not finish")
    sequences = _read_table(predictions, "sequence_predictions")
    frames = _read_table(predictions, "frame_predictions")
    unreported_path = predictions / "unreported.parquet"
    unreported = pl.read_parquet(unreported_path) if unreported_path.is_file() else None

    verdicts = sequences["verdict"].value_counts(sort=True)
    passes = []
    for path in telemetry:
        data = _read_json(path)
        for item in data.get("passes", []):
            passes.append({"shard": Path(path).name.removesuffix(".telemetry.json"), **item})
    top = (sequences.filter(pl.col("verdict") == "virus").sort("max_score_virus", descending=True)
           .head(TOP_SEQUENCES).select("sequence_id", "n_chunks", "n_virus_chunks", "n_frames", "max_score_virus",
                                       "mean_chunk_score_virus"))
    return {
        "version": __version__,
        "predict": _read_json(summary_path),
        "prepare": _read_json(prepare_summary) if prepare_summary else None,
        "verdicts": dict(zip(verdicts["verdict"].to_list(), verdicts["count"].to_list())),
        "unreported_reasons": (dict(unreported.group_by("reason").len().sort("reason").iter_rows())
                               if unreported is not None and unreported.height else {}),
        "sequence_max_score_virus": sequences["max_score_virus"].drop_nulls().to_list(),
        "sequence_verdict_for_scores": sequences.filter(pl.col("max_score_virus").is_not_null())["verdict"].to_list(),
        "frame_score_virus": frames["score_virus"].to_list(),
        "embedding_passes": passes,
        "top_virus_sequences": top.to_dicts(),
    }


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def make_figures(data: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs by title. Headless backend: reports are made on cluster nodes without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(5, 3))
    names = list(data["verdicts"])
    ax.bar(names, [data["verdicts"][n] for n in names], color=["#c0392b" if n == "virus" else "#7f8c8d" for n in names])
    ax.set_ylabel("input sequences")
    ax.set_title("Verdict per input sequence")
    figures["Verdicts"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    scores, labels = data["sequence_max_score_virus"], data["sequence_verdict_for_scores"]
    bins = [i / 20 for i in range(21)]
    for verdict, colour in (("virus", "#c0392b"), ("others", "#7f8c8d")):
        subset = [s for s, v in zip(scores, labels) if v == verdict]
        if subset:
            ax.hist(subset, bins=bins, alpha=0.7, label=verdict, color=colour)
    ax.set_xlabel("highest frame virus score of the sequence")
    ax.set_ylabel("sequences")
    ax.legend()
    ax.set_title("Sequence scores")
    figures["Sequence scores"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(data["frame_score_virus"], bins=bins, color="#2c3e50")
    ax.set_xlabel("virus score (softmax)")
    ax.set_ylabel("frames")
    ax.set_title("Frame scores")
    figures["Frame scores"] = _png(fig)
    plt.close(fig)

    if data["unreported_reasons"]:
        fig, ax = plt.subplots(figsize=(6, 3))
        reasons = list(data["unreported_reasons"])
        ax.barh(reasons, [data["unreported_reasons"][r] for r in reasons], color="#e67e22")
        ax.set_xlabel("rows (chunks or empty sequences)")
        ax.set_title("Why chunks gave no frame")
        figures["Unreported chunks"] = _png(fig)
        plt.close(fig)

    # A resumed task whose checkpoints were already complete embeds nothing: no throughput to plot.
    passes = [p for p in data["embedding_passes"] if p.get("tokens")]
    if passes:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
        labels = [f"{p['kind']}\n{p['shard'].rsplit('.', 1)[-1]}\n{p.get('device', '')}" for p in passes]
        left.bar(range(len(passes)), [p.get("tokens_per_s", 0) for p in passes], color="#2980b9")
        left.set_xticks(range(len(passes)), labels, fontsize=7)
        left.set_ylabel("tokens / s")
        left.set_title("Embedding throughput per pass")
        bottom = [0.0] * len(passes)
        for stage in STAGES:
            values = [p.get(stage, 0.0) or 0.0 for p in passes]
            right.bar(range(len(passes)), values, bottom=bottom, label=stage.removesuffix("_s"))
            bottom = [b + v for b, v in zip(bottom, values)]
        right.set_xticks(range(len(passes)), labels, fontsize=7)
        right.set_ylabel("seconds")
        right.set_title("Where the time went")
        right.legend(fontsize=7)
        figures["Embedding engine"] = _png(fig)
        plt.close(fig)
    return figures


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(f'{v:.4f}' if isinstance(v, float) else str(v))}</td>" for v in row.values())
        + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(data: dict[str, Any], figures: dict[str, str], title: str) -> str:
    prepare = data.get("prepare") or {}
    predict = data["predict"]
    overview = [{
        "input sequences": predict.get("n_sequences"),
        "chunks": prepare.get("chunks", predict.get("n_chunks")),
        "frames scored": predict.get("n_frames"),
        "virus": data["verdicts"].get("virus", 0),
        "others": data["verdicts"].get("others", 0),
        "no frames": data["verdicts"].get("no_frames", 0),
        "chunk length": predict.get("chunk_length"),
        "sequence rule": predict.get("sequence_rule"),
    }]
    engine_rows = [{
        "shard": p["shard"], "model": p["kind"], "device": p.get("device"), "sequences": p.get("sequences"),
        "tokens": p.get("tokens"), "tokens/s": round(p.get("tokens_per_s") or 0.0, 1),
        "packing efficiency": p.get("packing_efficiency"), "GPU busy": p.get("gpu_busy"),
    } for p in data["embedding_passes"]]
    images = "".join(f"<figure><img alt='{html.escape(t)}' src='data:image/png;base64,{b}'>"
                     f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, b in figures.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }} figcaption {{ text-align: center; font-size: 0.85em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>virnucpro {html.escape(data['version'])}. Scores come from the VirNucPro classifier on DNABERT-S + ESM-2 features;
the verdict rule and columns are described in docs/output.md.</p>
<h2>Overview</h2>{_table(overview)}
<h2>Figures</h2>{images}
<h2>Top virus sequences</h2>{_table(data['top_virus_sequences'])}
<h2>Chunks without a frame</h2>{_table([{'reason': k, 'rows': v} for k, v in data['unreported_reasons'].items()])}
<h2>Embedding engine</h2>{_table(engine_rows)}
</body></html>
"""


def write_report(predictions: Path, output: Path, *, prepare_summary: Path | None = None,
                 telemetry: list[Path] | None = None, json_output: Path | None = None,
                 title: str | None = None) -> dict[str, Any]:
    data = collect_report_data(predictions, prepare_summary, list(telemetry or []))
    figures = make_figures(data)
    page = render_html(data, figures, title or f"virnucpro report: {Path(predictions).name}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    tmp.write_text(page)
    os.replace(tmp, output)
    if json_output is not None:
        compact = {k: v for k, v in data.items() if k not in ("sequence_max_score_virus", "sequence_verdict_for_scores",
                                                              "frame_score_virus")}
        compact["figures"] = list(figures)
        Path(json_output).write_text(json.dumps(compact, indent=2, default=str) + "\n")
    return data
