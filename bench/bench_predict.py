"""Measure `virnucpro predict` on N frames of 768 + 2560 random features with a random published-layout classifier.

Writes bench/results/predict-cpu.json. Run:

    .venv/bin/python bench/bench_predict.py --frames 100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_inputs(workdir: Path, frames: int, seed: int) -> tuple[Path, Path]:
    """Features bundle + classifier, built in a child process so this one stays small (see bench_prepare.py)."""
    script = f"""
import numpy as np, torch
from virnucpro.classify.model import MLPClassifier
from virnucpro.io.features import features_writer
rng = np.random.default_rng({seed})
writer = features_writer({str(workdir / 'features')!r}, {frames}, 768, 2560)
for start in range(0, {frames}, 20000):
    stop = min(start + 20000, {frames})
    writer.write_rows(start, {{"dnabert": rng.normal(size=(stop - start, 768)).astype(np.float32),
                              "esm": rng.normal(size=(stop - start, 2560)).astype(np.float32)}})
writer.finalize([f"read_{{i // 2}}_chunk_1F{{1 + i % 2}}" for i in range({frames})])
torch.save(MLPClassifier(3328, 512, 2).eval().state_dict(), {str(workdir / '300_model.pth')!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    return workdir / "features", workdir / "300_model.pth"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--result", type=Path, default=Path(__file__).parent / "results" / "predict-cpu.json")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-predict-"))
    workdir.mkdir(parents=True, exist_ok=True)
    features, classifier = build_inputs(workdir, args.frames, args.seed)
    virnucpro = Path(sys.executable).with_name("virnucpro")
    command = [str(virnucpro), "predict", "--features", str(features), "--classifier", str(classifier),
               "--chunk-length", "300", "--output", str(workdir / "predictions")]
    load_before = os.getloadavg()
    started = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the feature builder's
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"predict failed: {command}")
    result = {
        "benchmark": "predict-cpu",
        "command": " ".join(["virnucpro", *command[1:]]),
        "frames": args.frames, "feature_dim": 3328,
        "wall_seconds": round(wall, 2), "frames_per_second": round(args.frames / wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "cpus": os.cpu_count(),
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
