"""The n-gram baseline against the shipped names configs, side by side in one run, over the same seeds.

The baseline is ../shared/baselines/ngram_names.py (a fastText-style linear classifier on character 1-5-grams
and the whole name); each config is trained as shipped through the real CLI with `--set train.seed=S`. Both
pick their best epoch on a validation split carved from the training CSV and test it once. Every process
runs with OMP_NUM_THREADS=--threads; within each seed the contenders' order rotates, so that a change in the
machine's load is shared out. Prints one line per run, then per contender the mean and sample standard
deviation of the test accuracy and the mean times.

Usage: python benchmarks/names_vs_ngram.py [CONFIG ...] [--seeds 0 1 2] [--threads 1]
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT.parent / "shared" / "baselines" / "ngram_names.py"
CONFIGS = ["configs/names_ngram_gru.yaml", "configs/names_gru.yaml"]


def baseline(script: Path, data: Path, seed: int, env: dict[str, str]) -> dict[str, float]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(script), str(data), str(seed)], check=True, capture_output=True, text=True, env=env
    ).stdout
    wall = time.perf_counter() - t0
    acc = float(re.search(r"^test_acc ([\d.]+)", out, re.M)[1])
    epoch, seconds = re.search(r"at epoch (\d+), ([\d.]+) s", out).groups()
    return {"acc": acc, "epoch": int(epoch), "train_s": float(seconds), "wall_s": wall}  # its own clock: all of it


def rnnctl(config: str, seed: int, env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as runs:
        cmd = [str(Path(sys.executable).with_name("rnnctl")), "train", config, "--quiet", "--set", f"train.seed={seed}"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env={**env, "RNNCTL_RUNS": runs}, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        (run,) = Path(runs).iterdir()
        info = json.loads((run / "run.json").read_text())
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    # training time: first batch to the end of the last epoch's validation; the wall time adds start-up,
    # reading the data, the final test and the plots
    return {"acc": info["test"]["acc"], "epoch": info["best"]["epoch"], "train_s": last["elapsed"], "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", default=CONFIGS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    ap.add_argument("--baseline", type=Path, default=BASELINE)
    args = ap.parse_args()
    data = Path(os.environ.get("RNNCTL_DATA", ROOT.parent / "shared" / "datasets"))
    env = {**os.environ, "RNNCTL_DATA": str(data), "OMP_NUM_THREADS": str(args.threads)}
    contenders = {"n-gram baseline": lambda s: baseline(args.baseline, data / "names", s, env)}
    contenders |= {c: (lambda s, c=c: rnnctl(c, s, env)) for c in args.configs}
    names = list(contenders)
    print(f"RNNCTL_DATA={data}, OMP_NUM_THREADS={args.threads}, seeds {args.seeds}\n")
    print("| seed | contender | test acc | best epoch | training (s) | whole process (s) |")
    print("|---:|---|---:|---:|---:|---:|")
    results: dict[str, list[dict[str, float]]] = {k: [] for k in names}
    for i, seed in enumerate(args.seeds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            r = contenders[name](seed)
            results[name].append(r)
            print(
                f"| {seed} | {name} | {r['acc']:.4f} | {r['epoch']} | {r['train_s']:.1f} | {r['wall_s']:.1f} |",
                flush=True,
            )
    print("\n| contender | test acc, mean ± std | runs | training (s), mean | whole process (s), mean |")
    print("|---|---:|---:|---:|---:|")
    for name, rs in results.items():
        accs = [r["acc"] for r in rs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        train, wall = (statistics.mean(r[k] for r in rs) for k in ("train_s", "wall_s"))
        print(f"| {name} | {statistics.mean(accs):.4f} ± {std:.4f} | {len(rs)} | {train:.1f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
