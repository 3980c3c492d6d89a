"""Training throughput (characters/s) of seed 002's model: rnnctl vs the numpy seed vs a bare PyTorch loop.

Model: one-hot input, vanilla RNN of 100 units, linear output, truncated BPTT of 20, Adagrad 0.1,
gradients clipped to +-5 (configs/charlm_minchar.yaml). rnnctl and the bare loop read 64 streams side
by side; the seed (../shared/baselines/seed002_minchar.py) reads one. Each contender is its own
process, the order rotating over the repeats; rnnctl's and the bare loop's first epoch is dropped
(warm-up) and the median of the rest is reported; the seed reports one figure per process.

Usage: python benchmarks/charlm_speed.py [--text ../shared/datasets/tinyshakespeare/input.txt]
       [--epochs 3] [--repeats 3] [--seed-iters 3000]
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


def run_seed(text: Path, iters: int, script: Path) -> list[float]:
    out = subprocess.run(
        [sys.executable, str(script), str(text), str(iters)], capture_output=True, text=True, check=True
    ).stdout
    return [float(re.search(r"chars_per_s (\d+)", out).group(1))]


def run_bare(text: Path, epochs: int) -> list[float]:
    cmd = [sys.executable, str(HERE / "bare_charlm.py"), str(text), str(epochs), "64"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [json.loads(line)["chars_per_s"] for line in out.splitlines()][1:]


def run_rnnctl(text: Path, epochs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as runs:
        cmd = [str(Path(sys.executable).with_name("rnnctl")), "train", str(ROOT / "configs/charlm_minchar.yaml"), "--quiet",
               "--set", f"data.path={text}", "--set", f"train.epochs={epochs}", "--set", "train.device=cpu"]  # fmt: skip
        subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "RNNCTL_RUNS": runs})
        (run,) = Path(runs).iterdir()
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["samples_per_s"] for r in rows][1:]  # training characters/s, the pass over train only


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, default=ROOT.parent / "shared/datasets/tinyshakespeare/input.txt")
    ap.add_argument("--seed-script", type=Path, default=ROOT.parent / "shared/baselines/seed002_minchar.py")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed-iters", type=int, default=3000)
    args = ap.parse_args()
    contenders = {
        "seed 002 (numpy, 1 stream)": lambda: run_seed(args.text, args.seed_iters, args.seed_script),
        "bare PyTorch loop, 64 streams": lambda: run_bare(args.text, args.epochs),
        "rnnctl train configs/charlm_minchar.yaml": lambda: run_rnnctl(args.text, args.epochs),
    }
    names = list(contenders)
    runs = interleaved(contenders, args.repeats, "chars/s", ",.0f")
    rates = {k: [x for run in v for x in run] for k, v in runs.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    seed, bare = med[names[0]], med[names[1]]
    print("| contender | median training chars/s | x seed 002 | / bare loop |")
    print("|---|---:|---:|---:|")
    for k in names:
        print(f"| {k} | {med[k]:,.0f} | {med[k] / seed:.1f}x | {med[k] / bare:.3f} |")
    # the VM drifts between speeds from one process to the next: also compare within each repeat, where
    # the rnnctl and bare processes ran back to back
    ratios = [
        statistics.median(ours) / statistics.median(theirs) for ours, theirs in zip(runs[names[2]], runs[names[1]])
    ]
    print(
        f"\nrnnctl / bare loop within each repeat: median {statistics.median(ratios):.3f}, "
        f"range {min(ratios):.3f} - {max(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)})"
    )


if __name__ == "__main__":
    main()
