"""Epoch time on the names task: rnnctl vs seed 001 (../shared/baselines) vs a bare PyTorch loop.

All contenders do the seed's work per epoch: train on names_train (13,374 names, batch 256) and
evaluate names_test (6,700), with seed 001's model (char embedding 100, 2-layer bi-GRU 100, Adam 1e-3).
rnnctl gets it through `data.val_path` = the test CSV; it still writes checkpoints, metrics and plots.
Each contender runs as its own process, the order rotating over the repeats; the first epoch of every
process is dropped (warm-up); the figure is the median epoch time over all the rest.

Usage: python benchmarks/names_speed.py [--data ../shared/datasets/names] [--epochs 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import interleaved

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEED_HPARAMS = [
    "model.cell=gru", "model.layers=2", "model.bidirectional=true", "model.hidden_size=100",
    "model.embedding_size=100", "model.dropout=0", "model.pooling=last", "optim.name=adam", "optim.lr=0.001",
    "optim.weight_decay=0", "train.batch_size=256", "train.grad_clip=null", "train.device=cpu",
]  # fmt: skip


def run_seed(data: Path, epochs: int, seed_script: Path) -> list[float]:
    out = subprocess.run(
        [sys.executable, str(seed_script), str(data), str(epochs)], capture_output=True, text=True, check=True
    ).stdout
    cumulative = [float(t) for t in re.findall(r"^epoch \d+ acc [\d.]+ t ([\d.]+)s", out, re.M)]
    return [b - a for a, b in zip([0.0, *cumulative], cumulative)]


def run_bare(data: Path, epochs: int, bucket: bool) -> list[float]:
    cmd = [sys.executable, str(HERE / "bare_names.py"), str(data), str(epochs)] + (["--bucket"] if bucket else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [json.loads(line)["epoch_time"] for line in out.splitlines()]


def run_rnnctl(data: Path, epochs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as runs:
        sets = [
            *SEED_HPARAMS,
            f"data.path={data}",
            f"data.val_path={data / 'names_test.csv.gz'}",
            f"train.epochs={epochs}",
        ]
        cmd = [str(Path(sys.executable).with_name("rnnctl")), "train", str(ROOT / "configs/names_gru.yaml"), "--quiet"]
        for s in sets:
            cmd += ["--set", s]
        subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "RNNCTL_RUNS": runs})
        (run,) = Path(runs).iterdir()
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        # elapsed is stamped after validation and before the checkpoint write: its differences
        # cover a whole epoch including the previous epoch's checkpoints, metrics files and logging
        elapsed = [r["elapsed"] for r in rows]
        return [rows[0]["epoch_time"]] + [b - a for a, b in zip(elapsed, elapsed[1:])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/datasets/names")
    ap.add_argument("--seed-script", type=Path, default=ROOT.parent / "shared/baselines/seed001_names.py")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    contenders = {
        "seed 001 (baselines/seed001_names.py)": lambda: run_seed(args.data, args.epochs, args.seed_script),
        "bare loop, random batches (packed)": lambda: run_bare(args.data, args.epochs, bucket=False),
        "bare loop, length-bucketed batches": lambda: run_bare(args.data, args.epochs, bucket=True),
        "rnnctl train (checkpoints, metrics, plots)": lambda: run_rnnctl(args.data, args.epochs),
    }
    names = list(contenders)
    runs = interleaved(contenders, args.repeats, "s per epoch")
    times = {k: [t for run in v for t in run[1:]] for k, v in runs.items()}  # each process's first epoch dropped
    med = {k: statistics.median(v) for k, v in times.items()}
    seed, bare = med[names[0]], med[names[2]]
    print(f"threads: torch default; epochs per process {args.epochs} (first dropped), repeats {args.repeats}\n")
    print("| contender | median epoch time (s) | speed-up over the seed | time / bare bucketed loop |")
    print("|---|---:|---:|---:|")
    for k in names:
        print(f"| {k} | {med[k]:.3f} | {seed / med[k]:.2f}x | {med[k] / bare:.3f} |")


if __name__ == "__main__":
    main()
