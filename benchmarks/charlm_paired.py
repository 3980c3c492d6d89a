"""rnnctl's training step vs a bare loop on seed 002's model, epoch for epoch in one process.

This VM switches between two speeds (about 350k and 520k characters/s for the same loop), so medians of
separate processes can compare a fast epoch with a slow one. Here the two loops alternate epoch by epoch
over the same streams of tiny Shakespeare, each with its own copy of the same model and optimizer, and
each ratio is taken between neighbouring epochs. rnnctl's side is `rnnctl.training.train_epoch`, the
function `rnnctl train` runs (gradient norm before clipping, metric sums, progress callback); the bare
side has none of that. Per-epoch work outside the step (validation, checkpoints, metrics files) is not
in either; benchmarks/charlm_speed.py measures the whole command.

Usage: python benchmarks/charlm_paired.py [--text ../shared/datasets/tinyshakespeare/input.txt] [--pairs 8]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from rnnctl.config import load_config
from rnnctl.training import train_epoch
from rnnctl.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent


def bare_epoch(model, split, optimizer, batch_size: int, generator: torch.Generator) -> int:
    """The loop one writes by hand: forward, loss, backward, clip by value, step; state carried."""
    model.train()
    state, chars = None, 0
    for batch in split.batches(batch_size, generator):
        out = model(batch.x, batch.targets, state)
        state = out.state.detach()
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 5.0)
        optimizer.step()
        chars += batch.targets.numel()
    return chars


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, default=ROOT.parent / "shared/datasets/tinyshakespeare/input.txt")
    ap.add_argument("--pairs", type=int, default=8)
    args = ap.parse_args()
    cfg = load_config(ROOT / "configs/charlm_minchar.yaml", [f"data.path={args.text}", "train.device=cpu"])
    task = get_task(cfg.task)
    data = task.prepare(cfg)
    split, bs = data.splits["train"], cfg.train.batch_size
    torch.manual_seed(0)
    ours = task.build_model(cfg, data.meta)
    bare = copy.deepcopy(ours)
    opt_ours = torch.optim.Adagrad(ours.parameters(), lr=cfg.optim.lr)
    opt_bare = torch.optim.Adagrad(bare.parameters(), lr=cfg.optim.lr)
    gen_ours, gen_bare = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    progress = lambda done, total: None  # noqa: E731  # the trainer always passes a callback
    ratios, rates = [], {"rnnctl": [], "bare": []}
    for i in range(args.pairs + 1):
        order = ("rnnctl", "bare") if i % 2 == 0 else ("bare", "rnnctl")
        took = {}
        for who in order:
            t0 = time.perf_counter()
            if who == "rnnctl":
                res = train_epoch(
                    ours, split, task.meter(data.meta), opt_ours, torch.device("cpu"), bs, gen_ours, None, 5.0, progress
                )
                chars = res["samples"]
            else:
                chars = bare_epoch(bare, split, opt_bare, bs, gen_bare)
            took[who] = time.perf_counter() - t0
            if i > 0:  # the first pair warms up
                rates[who].append(chars / took[who])
        if i > 0:
            ratios.append(took["bare"] / took["rnnctl"])
            print(
                f"pair {i}: rnnctl {rates['rnnctl'][-1]:,.0f} chars/s, bare {rates['bare'][-1]:,.0f} chars/s, ratio {ratios[-1]:.3f}",
                flush=True,
            )
    print(f"\nthreads {torch.get_num_threads()}; {args.pairs} pairs after one warm-up pair")
    print("| measurement | value |")
    print("|---|---:|")
    print(f"| rnnctl train_epoch, median chars/s | {statistics.median(rates['rnnctl']):,.0f} |")
    print(f"| bare loop, median chars/s | {statistics.median(rates['bare']):,.0f} |")
    print(f"| rnnctl / bare, median of paired epochs | {statistics.median(ratios):.3f} |")
    print(f"| rnnctl / bare, range | {min(ratios):.3f} - {max(ratios):.3f} |")


if __name__ == "__main__":
    main()
