"""A bare PyTorch loop for the names task, as a careful engineer would write it without a framework:
data tensorized once, batches sliced, seed 001's model and hyperparameters, no checkpoints, no display.

Each epoch trains on the whole train CSV and evaluates the whole test CSV (the seed's work per epoch).
Usage: python bare_names.py DATA_DIR EPOCHS [--bucket]
  --bucket: batches cut from length-sorted order, as rnnctl does (equal-length batches skip packing)
Prints one JSON line per epoch: {"epoch", "epoch_time", "train_time", "acc"}.
"""

import csv
import gzip
import io
import json
import sys
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


def read(path):
    rows = list(csv.reader(io.StringIO(gzip.open(path, "rt", encoding="utf-8").read())))
    return [r[0] for r in rows], [r[1] for r in rows]


def tensorize(names, labels, stoi, classes):
    lengths = torch.tensor([len(n) for n in names])
    x = torch.zeros(len(names), int(lengths.max()), dtype=torch.long)
    for i, n in enumerate(names):
        x[i, : len(n)] = torch.tensor([stoi.get(c, 1) for c in n])
    return x, lengths, torch.tensor([classes.index(c) for c in labels])


class Model(nn.Module):
    def __init__(self, vocab, classes, hidden=100, layers=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden, padding_idx=0)
        self.gru = nn.GRU(hidden, hidden, layers, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, x, lengths):
        e = self.emb(x)
        if bool(lengths.min() == lengths.max()):
            _, h = self.gru(e)
        else:
            _, h = self.gru(pack_padded_sequence(e, lengths, batch_first=True, enforce_sorted=False))
        return self.fc(torch.cat([h[-2], h[-1]], dim=1))


def batches(lengths, bs, gen, bucket):
    if gen is None:
        return torch.sort(lengths, stable=True).indices.split(bs)
    perm = torch.randperm(len(lengths), generator=gen)
    if not bucket:
        return perm.split(bs)
    chunks = perm[torch.sort(lengths[perm], stable=True).indices].split(bs)
    return [chunks[i] for i in torch.randperm(len(chunks), generator=gen).tolist()]


def main():
    data, epochs, bucket = sys.argv[1], int(sys.argv[2]), "--bucket" in sys.argv
    torch.manual_seed(0)
    tr_names, tr_labels = read(f"{data}/names_train.csv.gz")
    te_names, te_labels = read(f"{data}/names_test.csv.gz")
    chars = sorted({c for n in tr_names for c in n})
    stoi = {c: i + 2 for i, c in enumerate(chars)}
    classes = sorted(set(tr_labels))
    xtr, ltr, ytr = tensorize(tr_names, tr_labels, stoi, classes)
    xte, lte, yte = tensorize(te_names, te_labels, stoi, classes)
    model = Model(len(chars) + 2, len(classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for idx in batches(ltr, 256, gen, bucket):
            lengths = ltr[idx]
            loss = nn.functional.cross_entropy(model(xtr[idx, : int(lengths.max())], lengths), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        t1 = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad():
            for idx in batches(lte, 256, None, bucket):
                lengths = lte[idx]
                correct += (model(xte[idx, : int(lengths.max())], lengths).argmax(1) == yte[idx]).sum().item()
        t2 = time.perf_counter()
        print(
            json.dumps({"epoch": epoch, "epoch_time": t2 - t0, "train_time": t1 - t0, "acc": correct / len(yte)}),
            flush=True,
        )


if __name__ == "__main__":
    main()
