"""Test accuracy and CPU wall time of the shipped names configs, trained through the real CLI.

The data is read from RNNCTL_DATA (default ../shared/datasets), i.e. the canonical copies; the best
epoch is picked on the validation split carved from train, and test is evaluated once on it.
Usage: python benchmarks/names_accuracy.py [CONFIG ...] [--set key=value ...]
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
    ap.add_argument(
        "configs", nargs="*", default=["configs/names_gru.yaml", "configs/names_lstm.yaml", "configs/names_rnn.yaml"]
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    env = {**os.environ, "RNNCTL_DATA": os.environ.get("RNNCTL_DATA", str(ROOT.parent / "shared/datasets"))}
    print(f"RNNCTL_DATA={env['RNNCTL_DATA']}\n")
    print(
        "| config | test acc | test macro F1 | best epoch (val acc) | epochs | training time (s) | whole command (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for config in args.configs:
        with tempfile.TemporaryDirectory() as runs:
            cmd = [str(Path(sys.executable).with_name("rnnctl")), "train", config, "--quiet"]
            for o in args.overrides:
                cmd += ["--set", o]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, env={**env, "RNNCTL_RUNS": runs}, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            (run,) = Path(runs).iterdir()
            info = json.loads((run / "run.json").read_text())
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            train_time = rows[-1]["elapsed"]  # first batch to the end of the last epoch's validation
            best = info["best"]
            print(
                f"| {config} | {info['test']['acc']:.4f} | {info['test']['macro_f1']:.4f} | "
                f"{best['epoch']} ({best['value']:.4f}) | {info['epochs_done']} | {train_time:.1f} | {wall:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
