"""A fastText classifier alone on a config's data: the mean of the text's hashed n-gram vectors (rnnctl's
`model.ngrams` bags, made by the task's own pipeline) -> linear, Adam (fused) with a cosine schedule, batch 64,
no dropout. Prints validation and test accuracy and the time of each epoch; --save keeps the best epoch's
(on validation) probabilities for benchmarks/imdb_branches.py --bag.

Usage: RNNCTL_DATA=../shared/datasets python benchmarks/imdb_bag_alone.py [--config configs/imdb_bilstm.yaml]
           [--n 2] [--buckets 262144] [--dim 16] [--lr 0.01] [--epochs 5] [--save FILE]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from rnnctl.config import load_config
from rnnctl.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/imdb_bilstm.yaml")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--buckets", type=int, default=2**18)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--save")
    args = ap.parse_args()
    sets = [f"model.ngrams.n={args.n}", f"model.ngrams.buckets={args.buckets}", f"model.ngrams.dim={args.dim}",
            "model.ngrams.whole=false"]  # fmt: skip
    cfg = load_config(args.config, sets)
    t0 = time.perf_counter()
    data = get_task(cfg.task).prepare(cfg)
    print(f"data and bags: {time.perf_counter() - t0:.1f} s, {args.n}-grams into {args.buckets} x {args.dim}")
    torch.manual_seed(0)
    bag = nn.EmbeddingBag(args.buckets + 1, args.dim, mode="mean", padding_idx=0)
    nn.init.zeros_(bag.weight)
    head = nn.Linear(args.dim, len(data.meta["classes"]))
    optimizer = torch.optim.Adam([*bag.parameters(), *head.parameters()], lr=args.lr, fused=True)
    train = data.splits["train"]
    steps, step = args.epochs * train.num_batches(args.batch_size), 0
    generator = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def probabilities(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        batches = list(data.splits[split].batches(256))  # stored order: by length, stable
        return torch.cat([head(bag(b.ngrams)).softmax(-1) for b in batches]), torch.cat([b.targets for b in batches])

    best = -1.0
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        for batch in train.batches(args.batch_size, generator):
            for group in optimizer.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = F.cross_entropy(head(bag(batch.ngrams)), batch.targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        seconds = time.perf_counter() - t0
        (pv, yv), (pt, yt) = probabilities("val"), probabilities("test")
        val, test = float((pv.argmax(1) == yv).double().mean()), float((pt.argmax(1) == yt).double().mean())
        print(f"epoch {epoch}: {seconds:.1f} s, val {val:.4f}, test {test:.4f}")
        if val > best:
            best = val
            if args.save:
                torch.save({"val": pv, "yval": yv, "test": pt, "ytest": yt}, args.save)


if __name__ == "__main__":
    main()
