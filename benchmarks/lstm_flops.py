"""CPU efficiency: GFLOP/s of rnnctl's 2-layer LSTM-512 training step vs a plain float32 matmul, one process.

The LSTM step is rnnctl's own code path: `CharLM` trained by `rnnctl.training.train_epoch` on random
character ids (64 streams x bptt 100, embedding 64, vocabulary 65, Adam), i.e. what
`configs/charlm_shakespeare.yaml` runs. FLOPs are counted analytically, multiply-add = 2 FLOPs:
per character and layer 2 * 4H * (input + H) for the gates, plus 2 * H * V for the output layer;
backward = 2 x forward, so a training step is 3 x forward (elementwise gate math not counted).
The matmul reference is torch.mm on float32 square matrices (best of several runs, same threads).

Usage: python benchmarks/lstm_flops.py [--steps 12] [--matmul 2048] [--cell lstm|gru|rnn]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rnnctl.config import load_config
from rnnctl.models import CharLM
from rnnctl.tasks.charlm import StreamSplit
from rnnctl.tasks.tokens import LMMeter
from rnnctl.training import train_epoch

ROOT = Path(__file__).resolve().parent.parent


def matmul_gflops(n: int, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def lstm_step_gflops(
    steps: int, cell: str = "lstm", B: int = 64, T: int = 100, E: int = 64, H: int = 512, V: int = 65
) -> tuple[float, float]:
    torch.manual_seed(0)
    sets = [f"model.cell={cell}", f"model.embedding_size={E}", f"model.hidden_size={H}", "model.layers=2"]
    model = CharLM(load_config(ROOT / "configs/charlm_shakespeare.yaml", sets).model, V)
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    split = StreamSplit(torch.randint(0, V, (B * T * (steps + 2) + 1,)), T)
    forward_per_char = 2 * gates * H * (E + H) + 2 * gates * H * (H + H) + 2 * H * V
    train_epoch(
        model, StreamSplit(split.ids[: B * T * 2 + 1], T), LMMeter(), opt, torch.device("cpu"), B, None, 5.0
    )  # warm-up
    t0 = time.perf_counter()
    train_epoch(model, split, LMMeter(), opt, torch.device("cpu"), B, None, 5.0)
    dt = time.perf_counter() - t0
    chars = B * T * (steps + 2)
    return 3 * forward_per_char * chars / dt / 1e9, chars / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--matmul", type=int, default=2048)
    ap.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    args = ap.parse_args()
    mm = matmul_gflops(args.matmul)
    lstm, cps = lstm_step_gflops(args.steps, args.cell)
    mm2 = matmul_gflops(args.matmul)  # again after, in case the clock moved
    ref = max(mm, mm2)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| measurement | GFLOP/s |")
    print("|---|---:|")
    print(f"| float32 matmul {args.matmul}x{args.matmul} (best of before/after) | {ref:.1f} |")
    print(f"| rnnctl 2-layer {args.cell.upper()}-512 training step ({cps:,.0f} chars/s) | {lstm:.1f} |")
    print(f"| ratio | {lstm / ref:.2f} |")


if __name__ == "__main__":
    main()
