"""Validation loss against training wall time of `configs/charlm_shakespeare.yaml` as shipped.

Trains through the real CLI on tiny Shakespeare from RNNCTL_DATA (default ../shared/datasets), the last
10% of the text held out for validation, and prints the curve from the run's metrics.jsonl.
Usage: python benchmarks/charlm_quality.py [--runs DIR] [CONFIG] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/charlm_shakespeare.yaml")
    ap.add_argument("--runs", type=Path, default=ROOT / "benchmarks/out/runs")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    env = {**os.environ, "RNNCTL_RUNS": str(args.runs)}
    env.setdefault("RNNCTL_DATA", str(ROOT.parent / "shared/datasets"))
    cmd = [str(Path(sys.executable).with_name("rnnctl")), "train", args.config, "--quiet", "--name", "charlm-quality"]
    for o in args.overrides:
        cmd += ["--set", o]
    before = set(args.runs.glob("*")) if args.runs.exists() else set()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    (run,) = set(args.runs.glob("*")) - before
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    print(f"run {run}\n")
    print("| epoch | training time (min) | train loss | val loss (nats/char) | val bits/char | chars/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['epoch']} | {r['elapsed'] / 60:.1f} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | {r['val_bpc']:.3f} | {r['samples_per_s']:,.0f} |"
        )
    best = min(rows, key=lambda r: r["val_loss"])
    hit = next((r for r in rows if r["val_loss"] <= 1.42), None)  # the target of #16
    print(
        f"\nbest val loss {best['val_loss']:.4f} at epoch {best['epoch']} ({best['elapsed'] / 60:.1f} min); "
        + (f"<= 1.42 first at epoch {hit['epoch']} ({hit['elapsed'] / 60:.1f} min)" if hit else "never <= 1.42")
    )


if __name__ == "__main__":
    main()
