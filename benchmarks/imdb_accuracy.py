"""IMDb sentiment through the real CLI: test accuracy, time per epoch, tokens/s, and what bucketing saves.

Trains `configs/imdb_bilstm.yaml` (or the configs given) with `rnnctl train --quiet` on the canonical
copies in RNNCTL_DATA (default ../shared/datasets: imdb/train.csv.gz and test.csv.gz, 25,000 each),
the best epoch picked on the 2,500 reviews carved from train for validation, then tested once on
the 25,000 test reviews. Tokens/s = reviews/s of the training pass x the mean words per review after
truncation (the run's derived facts). With --no-bucket-epoch, one more epoch runs with data.bucket=false
to measure what length bucketing saves in time (its padding share is in the derived facts either way).
Usage: python benchmarks/imdb_accuracy.py [CONFIG ...] [--set key=value ...] [--no-bucket-epoch]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def train(config: str, overrides: list[str], env: dict[str, str]) -> tuple[Path, float, tempfile.TemporaryDirectory]:
    runs = tempfile.TemporaryDirectory()
    cmd = [str(Path(sys.executable).with_name("rnnctl")), "train", config, "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**env, "RNNCTL_RUNS": runs.name}, stdout=subprocess.DEVNULL)
    (run,) = Path(runs.name).iterdir()
    return run, time.perf_counter() - t0, runs


def mean_tokens(run: Path) -> float:
    """Mean words per training review after truncation, from the derived length histogram if present."""
    derived = yaml.safe_load((run / "config.yaml").read_text())["derived"]
    return derived.get("words_per_example_kept", {}).get("mean") or derived["words_per_example"]["mean"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", default=["configs/imdb_bilstm.yaml"])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-bucket-epoch", action="store_true")
    args = ap.parse_args()
    env = {**os.environ, "RNNCTL_DATA": os.environ.get("RNNCTL_DATA", str(ROOT.parent / "shared/datasets"))}
    print(f"RNNCTL_DATA={env['RNNCTL_DATA']}\n")
    for config in args.configs:
        run, seconds, keep = train(config, args.overrides, env)
        info = json.loads((run / "run.json").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if not r.get("partial")]
        derived = yaml.safe_load((run / "config.yaml").read_text())["derived"]
        tokens = mean_tokens(run)
        epoch_times = [r["epoch_time"] for r in rows]
        speed = statistics.median(r["samples_per_s"] for r in rows)
        print(f"## {config} {' '.join(args.overrides)}")
        print(
            f"test accuracy {info['test']['acc']:.4f} (macro F1 {info['test']['macro_f1']:.4f}), "
            f"best epoch {info['best']['epoch']} (val acc {info['best']['value']:.4f}) of {len(rows)}"
        )
        print(
            f"training time {rows[-1]['elapsed']:.0f} s ({rows[-1]['elapsed'] / 60:.1f} min); whole command {seconds:.0f} s"
        )
        print(f"epoch time: median {statistics.median(epoch_times):.1f} s, all {[round(t, 1) for t in epoch_times]}")
        print(f"training pass: {speed:.1f} reviews/s, {speed * tokens:,.0f} tokens/s (mean {tokens:.1f} words/review)")
        print(f"val acc per epoch: {[round(r['val_acc'], 4) for r in rows]}")
        print(
            f"padding share of an epoch: bucketed {derived['padding']['bucketed']:.4f}, "
            f"unbucketed {derived['padding']['unbucketed']:.4f}"
        )
        keep.cleanup()
        if args.no_bucket_epoch:
            run, _, keep = train(config, [*args.overrides, "data.bucket=false", "train.epochs=1"], env)
            row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
            print(
                f"one epoch without bucketing: {row['epoch_time']:.1f} s ({row['samples_per_s']:.1f} reviews/s) "
                f"vs {epoch_times[0]:.1f} s bucketed (first epochs compared)"
            )
            keep.cleanup()
        print(flush=True)


if __name__ == "__main__":
    main()
