"""A search on names within a fixed CPU budget against the shipped config, and what pruning saved.

Runs, through the CLI and in fresh runs folders (RNNCTL_DATA = ../shared/datasets):
1. `rnnctl train configs/names_gru.yaml` (the shipped config) with `--seeds` seeds;
2. `rnnctl search configs/names_gru.yaml --space ... --trials 30 --timeout BUDGET` with the median pruner;
3. `rnnctl train best.yaml` of that study with the same seeds.
It prints validation and test accuracy (mean over the seeds) and wall times, and for the study: trials
completed, pruned and failed, the epochs the pruned trials did not train (pruning's saving, as a share of
the epochs all trials would have trained), and the wall time.
Usage: python benchmarks/names_search.py [--budget 30m] [--trials 30] [--jobs 1] [--seeds 0 1 2]
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

ROOT = Path(__file__).resolve().parent.parent
SPACE = [
    "optim.lr=loguniform(3e-4,1e-2)",
    "model.cell=choice(rnn,lstm,gru)",
    "model.hidden_size=int(32,256,log)",
    "model.embedding_size=int(16,128,log)",
    "model.dropout=uniform(0,0.5)",
    "model.layers=int(1,2)",
]


def train(rnnctl: str, config: str, seeds: list[int], env: dict[str, str]) -> list[dict]:
    infos = []
    for seed in seeds:
        t0 = time.perf_counter()
        subprocess.run([rnnctl, "train", config, "--quiet", "--set", f"train.seed={seed}"], cwd=ROOT, env=env,
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        wall = time.perf_counter() - t0
        runs = sorted(p for p in Path(env["RNNCTL_RUNS"]).iterdir() if (p / "run.json").is_file())
        info = json.loads((runs[-1] / "run.json").read_text())
        infos.append({"val": info["best"]["value"], "test": info["test"]["acc"], "wall": wall})
    return infos


def show(name: str, infos: list[dict]) -> None:
    mean = lambda k: statistics.fmean(i[k] for i in infos)  # noqa: E731
    sd = lambda k: statistics.stdev(i[k] for i in infos) if len(infos) > 1 else 0.0  # noqa: E731
    print(f"| {name} | {mean('val'):.4f} +- {sd('val'):.4f} | {mean('test'):.4f} +- {sd('test'):.4f} | "
          f"{mean('wall'):.0f} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="30m")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    rnnctl = str(Path(sys.executable).with_name("rnnctl"))
    data = os.environ.get("RNNCTL_DATA", str(ROOT.parent / "shared/datasets"))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RNNCTL_DATA": data, "RNNCTL_RUNS": str(Path(tmp) / "runs")}
        shipped = train(rnnctl, "configs/names_gru.yaml", args.seeds, env)
        cmd = [rnnctl, "search", "configs/names_gru.yaml", *(a for s in SPACE for a in ("--space", s)),
               "--trials", str(args.trials), "--jobs", str(args.jobs), "--timeout", args.budget, "--study", "bench"]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        search_wall = time.perf_counter() - t0
        study = Path(env["RNNCTL_RUNS"]) / "studies" / "bench"
        trained = planned = 0
        states: dict[str, int] = {}
        for run in (study / "runs").iterdir():
            info = json.loads((run / "run.json").read_text())
            states[info["status"]] = states.get(info["status"], 0) + 1
            trained += info.get("epochs_done", 0)
            planned += info.get("epochs", 0)
        best_cfg = str(study / "best.yaml")
        found = train(rnnctl, best_cfg, args.seeds, {**env, "RNNCTL_RUNS": str(Path(tmp) / "best")})
        print(f"\nsearch: {args.trials} trials asked, budget {args.budget}, --jobs {args.jobs}: wall {search_wall:.0f} s; "
              f"trials {states}; epochs trained {trained} of {planned} ({1 - trained / max(planned, 1):.0%} "
              f"saved by pruning)\n")  # fmt: skip
        print(f"| config | best val acc (mean +- std, seeds {args.seeds}) | test acc | train wall (s) |")
        print("|---|---:|---:|---:|")
        show("configs/names_gru.yaml", shipped)
        show("the study's best.yaml", found)
        print("\n" + (study / "best.yaml").read_text())


if __name__ == "__main__":
    main()
