"""minGRU and minLSTM against rnn, lstm and gru on names and charlm, at about equal parameter counts.

Every run goes through the real CLI, one process at a time, each in a temporary runs folder:
`rnnctl train CONFIG --quiet --set model.cell=C --set model.hidden_size=H --set train.seed=S --set ...`
- names: configs/names_gru.yaml as shipped (embedding 100, 2-layer bidirectional, 25 epochs) on
  DATASETS/names/names_train.csv.gz, tested once on names_test.csv.gz at the best validation epoch.
  Quality: test accuracy.
- charlm: configs/charlm_shakespeare.yaml (embedding 64, 2 layers, bptt 100, 64 streams) on
  DATASETS/tinyshakespeare/input.txt, for --charlm-epochs epochs (the shipped 20 take ~28 min per run for
  the LSTM). Quality: the best validation loss in nats/char (the last 10% of the text).
Equal size: each cell's hidden size is the one whose recurrent layers have the parameter count closest to
those of the config's own cell at the config's hidden size (names: GRU-100; charlm: LSTM-512; shrink it
with e.g. --charlm-set model.hidden_size=128). The embedding is the same for every cell; the output layer
grows with the hidden size (about 1-2% of the total at these sizes, more for tiny models); the table shows
each run's total from run.json. Every other hyperparameter (lr, dropout, clipping) is the config's, the same
for every cell: nothing is tuned per cell.
Time per epoch: the median over a run's epochs of metrics.jsonl's `epoch_time` (training and validation),
then mean +- std over the seeds. Cells run in a rotating order within each seed so drifts in machine
speed are shared out. The defaults (3 seeds, 5 charlm epochs) make 30 runs: roughly 2.5-3 hours on an idle
2-core machine (an estimate from per-step timings, not measured).
Usage: python benchmarks/mincells.py [--tasks names charlm] [--cells rnn lstm gru mingru minlstm]
         [--seeds 1 2 3] [--charlm-epochs 5] [--names-set key=value ...] [--charlm-set key=value ...]
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

import torch
import yaml

from rnnctl import cells

ROOT = Path(__file__).resolve().parent.parent
RNNCTL = str(Path(sys.executable).with_name("rnnctl"))
CELLS = ["rnn", "lstm", "gru", "mingru", "minlstm"]


def task_settings(args: argparse.Namespace) -> dict[str, tuple[str, list[str], str]]:
    """task -> (config, overrides, quality metric). User overrides come last, so they win."""
    data = args.datasets
    return {
        "names": (
            "configs/names_gru.yaml",
            [f"data.path={data / 'names/names_train.csv.gz'}", f"data.test_path={data / 'names/names_test.csv.gz'}",
             *args.names_set],
            "test acc",
        ),
        "charlm": (
            "configs/charlm_shakespeare.yaml",
            [f"data.path={data / 'tinyshakespeare/input.txt'}", f"train.epochs={args.charlm_epochs}", *args.charlm_set],
            "best val loss",
        ),
    }  # fmt: skip


def resolved(config: str, overrides: list[str]) -> dict:
    """The config as rnnctl resolves it (`rnnctl config show`), so the sizes below are the ones trained."""
    cmd = [RNNCTL, "config", "show", config, *[a for o in overrides for a in ("--set", o)]]
    return yaml.safe_load(subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout)


def recurrent_parameters(cell: str, m: dict, hidden: int) -> int:
    with torch.device("meta"):  # no memory, no init: only the shapes
        rnn = cells.get(cell).fused(m["embedding_size"], hidden, m["layers"], m["bidirectional"], 0.0)
    return sum(p.numel() for p in rnn.parameters())


def matched_hidden(cell: str, m: dict, target: int) -> int:
    """The hidden size whose recurrent parameter count is closest to `target` (counts grow with the size)."""
    lo, hi = 1, 1
    while recurrent_parameters(cell, m, hi) < target:
        hi *= 2
    while hi - lo > 1:  # the smallest size with at least `target` is `hi`; its neighbour below may be closer
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if recurrent_parameters(cell, m, mid) < target else (lo, mid)
    return min((lo, hi), key=lambda h: abs(recurrent_parameters(cell, m, h) - target))


def train(config: str, overrides: list[str], runs: Path) -> Path:
    cmd = [RNNCTL, "train", config, "--quiet", *[a for o in overrides for a in ("--set", o)]]
    before = set(runs.iterdir()) if runs.exists() else set()
    env = {**os.environ, "RNNCTL_RUNS": str(runs)}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    (run,) = set(runs.iterdir()) - before
    return run


def measure(task: str, run: Path) -> dict:
    record = json.loads((run / "run.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epoch_times = [r["epoch_time"] for r in rows if "epoch_time" in r]
    if task == "names":
        quality = json.loads((run / "eval" / "test-best.json").read_text())["acc"]
    else:
        quality = min(r["val_loss"] for r in rows)
    return {"quality": quality, "epoch_time": statistics.median(epoch_times), "parameters": record["parameters"]}


def mean_std(xs: list[float], fmt: str) -> str:
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{format(statistics.mean(xs), fmt)} +- {format(std, fmt)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", choices=["names", "charlm"], default=["names", "charlm"])
    ap.add_argument("--cells", nargs="+", default=CELLS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--charlm-epochs", type=int, default=5)
    ap.add_argument("--names-set", action="append", default=[], metavar="KEY=VALUE", help="extra override (names)")
    ap.add_argument("--charlm-set", action="append", default=[], metavar="KEY=VALUE", help="extra override (charlm)")
    ap.add_argument("--datasets", type=Path, default=ROOT.parent / "shared/datasets")
    args = ap.parse_args()
    settings = task_settings(args)
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            config, overrides, metric = settings[task]
            m = resolved(config, overrides)["model"]  # the reference: the config's cell and hidden size
            ref_cell, ref_hidden = m["cell"], m["hidden_size"]
            target = recurrent_parameters(ref_cell, m, ref_hidden)
            hidden = {c: matched_hidden(c, m, target) for c in args.cells}
            print(f"{task}: recurrent parameters of {ref_cell}-{ref_hidden}: {target:,}; hidden sizes {hidden}",
                  file=sys.stderr)  # fmt: skip
            results: dict[str, list[dict]] = {c: [] for c in args.cells}
            for i, seed in enumerate(args.seeds):
                order = args.cells[i % len(args.cells) :] + args.cells[: i % len(args.cells)]
                for c in order:
                    sets = [*overrides, f"model.cell={c}", f"model.hidden_size={hidden[c]}", f"train.seed={seed}"]
                    r = measure(task, train(config, sets, Path(tmp) / "runs"))
                    results[c].append(r)
                    print(f"{task} {c}-{hidden[c]} seed {seed}: {metric} {r['quality']:.4f}, "
                          f"epoch {r['epoch_time']:.2f} s, {r['parameters']:,} parameters", file=sys.stderr)  # fmt: skip
            lines = [
                f"\n{task} ({config}; {', '.join(overrides)}), {len(args.seeds)} seed(s) {args.seeds}\n",
                f"| cell | hidden | recurrent params | total params | {metric} | time per epoch (s) |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for c in args.cells:
                rs = results[c]
                lines.append(
                    f"| {c} | {hidden[c]} | {recurrent_parameters(c, m, hidden[c]):,} | {rs[0]['parameters']:,} | "
                    f"{mean_std([r['quality'] for r in rs], '.4f')} | {mean_std([r['epoch_time'] for r in rs], '.2f')} |"
                )
            print("\n".join(lines))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
