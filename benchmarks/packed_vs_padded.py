"""Why rnnctl's classifiers do not pack: one training step (forward + backward) of a recurrent encoder over
an IMDb-like batch, packed through the fused module vs rnnctl's PaddedRNN (same results, tested).

Batch: 64 sequences of 266-270 steps (a length-bucketed batch), embedding 128, hidden 128.
Usage: python benchmarks/packed_vs_padded.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from rnnctl.models import RNN_MODULES, PaddedRNN


def step_ms(f, repeats: int) -> float:
    f()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    B, T, E, H = 64, 270, 128, 128
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(T - 4, T + 1, (B,), generator=g)
    lengths[0] = T
    print("| cell | directions | packed fused module (ms/step) | PaddedRNN (ms/step) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for cell in ("lstm", "gru"):
        for bidirectional in (True, False):
            torch.manual_seed(0)
            fused = RNN_MODULES[cell](E, H, batch_first=True, bidirectional=bidirectional)
            padded = PaddedRNN(cell, E, H, 1, bidirectional, 0.0)
            padded.load_state_dict(fused.state_dict())
            x = torch.randn(B, T, E, generator=g, requires_grad=True)

            def packed_step():
                out, _ = fused(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
                out.data.sum().backward()

            def padded_step():
                padded(x, lengths).sum().backward()

            a, b = step_ms(packed_step, args.repeats), step_ms(padded_step, args.repeats)
            print(f"| {cell} | {2 if bidirectional else 1} | {a:.0f} | {b:.0f} | {a / b:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
