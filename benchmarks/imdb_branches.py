"""What each branch of a `model.ngrams.head: own` classifier contributes: the accuracy of the recurrent branch
alone, of the n-gram bag alone and of their mean probability (what the model predicts), on validation and test,
from a run's best checkpoint. With --bag FILE, the recurrent branch is also averaged with the probabilities
saved by benchmarks/imdb_bag_alone.py (a bag trained on its own), the offline check that led to `head: own`.

Usage: RNNCTL_DATA=../shared/datasets python benchmarks/imdb_branches.py RUN [--bag FILE] [--checkpoint best]
"""

from __future__ import annotations

import argparse

import torch

from rnnctl.inference import LoadedRun


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    return float((probs.argmax(1) == y).double().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--bag", help="probabilities saved by imdb_bag_alone.py --save")
    ap.add_argument("--checkpoint", default="best")
    args = ap.parse_args()
    loaded = LoadedRun(args.run, args.checkpoint, device="cpu")
    model = loaded.model
    own = getattr(model, "ngram_head", None) is not None
    data = loaded.task.prepare(loaded.cfg, meta=loaded.meta)
    seen: dict[str, torch.Tensor] = {}
    heads = ["head", "ngram_head"] if own else ["head"]
    for name in heads:
        getattr(model, name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    bag = torch.load(args.bag, weights_only=True) if args.bag else None
    print(f"{loaded.run.path.name}, checkpoint {args.checkpoint} (epoch {loaded.ckpt['epoch']})")
    for split in ("val", "test"):
        probs: dict[str, list[torch.Tensor]] = {name: [] for name in [*heads, "model"]}
        ys = []
        with torch.no_grad():
            for batch in data.splits[split].batches(256):  # stored order: by length, stable
                out = model(**batch.inputs)
                probs["model"].append(out.logits.softmax(-1))
                for name in heads:
                    probs[name].append(seen[name].softmax(-1))
                ys.append(batch.targets)
        y = torch.cat(ys)
        p = {name: torch.cat(parts) for name, parts in probs.items()}
        first = "recurrent" if own or model.ngrams is None else "shared head"
        line = [f"{split:>4}: {first} {accuracy(p['head'], y):.4f}"]
        if own:
            line.append(f"bag {accuracy(p['ngram_head'], y):.4f}")
        line.append(f"model {accuracy(p['model'], y):.4f}")
        if bag is not None:
            if not torch.equal(bag[f"y{split}"], y):
                raise SystemExit(f"{args.bag}: its {split} examples are not this run's, in this order")
            line.append(f"recurrent + separate bag {accuracy((p['head'] + bag[split]) / 2, y):.4f}")
        print(", ".join(line))


if __name__ == "__main__":
    main()
