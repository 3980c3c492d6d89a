"""A bare PyTorch loop for seed 002's character model, as one would write it without a framework.

One-hot input, vanilla RNN of 100 units, linear output, Adagrad 0.1, each gradient clipped to +-5,
B parallel streams, truncated BPTT of 20 with the hidden state carried and detached; trains on the
first 90% of the text. No validation, checkpoints or display.
Usage: python bare_charlm.py TEXT EPOCHS [BATCH]   prints one JSON line per epoch: chars/s of training.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


def main():
    path, epochs = sys.argv[1], int(sys.argv[2])
    B = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    T, H = 20, 100
    torch.manual_seed(0)
    text = open(path, encoding="utf-8").read()
    vocab = sorted(set(text))
    stoi = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([stoi[c] for c in text])
    ids = ids[: len(ids) - len(ids) // 10]
    n = (len(ids) - 1) // B
    x_all = ids[: B * n].view(B, n)
    y_all = ids[1 : B * n + 1].view(B, n)
    V = len(vocab)
    rnn = nn.RNN(V, H, batch_first=True)
    head = nn.Linear(H, V)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adagrad(params, lr=0.1)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        h = None
        chars = 0
        for t in range(0, n, T):
            x, y = x_all[:, t : t + T], y_all[:, t : t + T]
            out, h = rnn(F.one_hot(x, V).float(), h)
            h = h.detach()
            loss = F.cross_entropy(head(out).reshape(-1, V), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_value_(params, 5.0)
            opt.step()
            chars += y.numel()
        dt = time.perf_counter() - t0
        print(json.dumps({"epoch": epoch, "chars_per_s": chars / dt, "seconds": dt, "loss": loss.item()}), flush=True)


if __name__ == "__main__":
    main()
