"""The cell comparison sweep on the names task, --jobs 1 vs --jobs 2: wall time and the summary table.

Runs `rnnctl sweep configs/names_gru.yaml --grid model.cell=rnn,lstm,gru --grid train.seed=1,2,3`
twice through the CLI (RNNCTL_DATA = ../shared/datasets), once per --jobs value, in fresh runs folders.
Usage: python benchmarks/names_sweep.py [--jobs 1 2]
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

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    env = {**os.environ, "RNNCTL_DATA": os.environ.get("RNNCTL_DATA", str(ROOT.parent / "shared/datasets"))}
    rnnctl = str(Path(sys.executable).with_name("rnnctl"))
    for jobs in args.jobs:
        with tempfile.TemporaryDirectory() as runs:
            cmd = [rnnctl, "sweep", "configs/names_gru.yaml", "--grid", "model.cell=rnn,lstm,gru",
                   "--grid", "train.seed=1,2,3", "--jobs", str(jobs)]  # fmt: skip
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, env={**env, "RNNCTL_RUNS": runs}, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            (folder,) = (Path(runs) / "sweeps").iterdir()
            summary = json.loads((folder / "summary.json").read_text())
            counts = summary["counts"]
            print(f"\n--jobs {jobs}: wall time {wall:.0f} s ({wall / 60:.1f} min), "
                  f"{counts.get('completed', 0)}/{sum(counts.values())} members completed\n")  # fmt: skip
            print(f"| group | runs | {summary['group_metric']} mean | std |")
            print("|---|---:|---:|---:|")
            for g in sorted(summary["groups"], key=lambda g: -g["mean"]):
                print(f"| {g['group']} | {g['n']} | {g['mean']:.4f} | {g['std'] or 0:.4f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
