"""Epoch time of one process with 2 threads vs 2 processes (torchrun, gloo) with 1 thread each, on this CPU.

Both through the real CLI, side by side and interleaved (the order rotates over the repeats):
  1 x 2: OMP_NUM_THREADS=2 rnnctl train CONFIG --quiet
  2 x 1: OMP_NUM_THREADS=1 rnnctl train CONFIG --quiet --nproc 2
The figure per run is the median epoch time (metrics.jsonl's epoch_time, rank 0's, which includes the
all-reduces and rank 0's checkpointing). Data: RNNCTL_DATA = ../shared/datasets.
Usage: python benchmarks/ddp_cpu.py [--task names charlm] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import interleaved

ROOT = Path(__file__).resolve().parent.parent
TASKS = {  # config, overrides (charlm: two whole epochs of tiny Shakespeare, 2% of it held out)
    "names": ("configs/names_gru.yaml", ["train.epochs=4"]),
    "charlm": ("configs/charlm_shakespeare.yaml", ["train.epochs=2", "data.val_fraction=0.02"]),
}


def epoch_times(config: str, overrides: list[str], procs: int) -> list[float]:
    env = {
        **os.environ,
        "RNNCTL_DATA": os.environ.get("RNNCTL_DATA", str(ROOT.parent / "shared/datasets")),
        "OMP_NUM_THREADS": str(2 // procs),
    }
    rnnctl = str(Path(sys.executable).with_name("rnnctl"))
    with tempfile.TemporaryDirectory() as runs:
        cmd = [rnnctl, "train", config, "--quiet", *[a for o in overrides for a in ("--set", o)]]
        if procs > 1:
            cmd += ["--nproc", str(procs)]
        subprocess.run(cmd, cwd=ROOT, env={**env, "RNNCTL_RUNS": runs}, check=True, stdout=subprocess.DEVNULL)
        (run,) = Path(runs).iterdir()
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [statistics.median(r["epoch_time"] for r in rows if "epoch_time" in r)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print("| task | 1 process x 2 threads (s/epoch) | 2 processes x 1 thread (s/epoch) | ratio 2x1 / 1x2 |")
    print("|---|---:|---:|---:|")
    for task in args.task:
        config, overrides = TASKS[task]
        out = interleaved(
            {"1x2": lambda: epoch_times(config, overrides, 1), "2x1": lambda: epoch_times(config, overrides, 2)},
            args.repeats,
            "s/epoch",
        )
        one = statistics.median(x for run in out["1x2"] for x in run)
        two = statistics.median(x for run in out["2x1"] for x in run)
        print(f"| {task} | {one:.1f} | {two:.1f} | {two / one:.2f} |", flush=True)


if __name__ == "__main__":
    main()
