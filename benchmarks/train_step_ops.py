"""Where a CPU train step's time goes by kind of operation, and how fast `ours` could be at most against `today`.

One process, the reference-size INTR (ResNet-50, stem and stage 1 frozen, 6 + 6 layers, 200 classes), random
pixels, the model's forward + backward and a fused AdamW step (the Trainer's data, clipping and logging left out), at
a given thread count. For `today` (the code before issue 11, `benchmarks/unfolded_backbone.py`) and `ours`,
torch.profiler's self time of every ATen op goes into one of three bins:

- convolution: the backbone's and the input projection's convolutions, forward and backward;
- matmul: `mm` / `addmm` / `bmm` (the transformer's linear layers and attention products, forward and backward);
- other: everything else (element-wise passes, dropout, softmax, LayerNorm, the optimizer, copies).

The bins are scaled to the step's time measured without the profiler. Convolutions and matmuls do work that both
codes must do: if they already run near the CPU's float32 peak (the GFLOP/s printed against a float32 matmul at the
same thread count, from torch's FLOP counter), `today / (ours' convolution + matmul time)` bounds what removing more
element-wise work can give.

    python benchmarks/train_step_ops.py --threads 1     # as each process of the 2-process benchmark runs
    python benchmarks/train_step_ops.py --threads 2
"""

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_forward import configuration, hardware_line, matmul_peak  # noqa: E402

from modeling_intr import IntrConfig, IntrForImageClassification  # noqa: E402

BINS = ("convolution", "matmul", "other")


def op_bin(name: str) -> str:
    if "conv" in name:
        return "convolution"
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
        return "matmul"
    return "other"


def measure(backbone: str, batch_size: int, size: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = IntrForImageClassification(IntrConfig(num_labels=200)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    pixel_values, labels = torch.randn(batch_size, 3, size, size), torch.arange(batch_size)

    def step():
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with configuration(backbone):  # bench_forward's: `today` = every issue-11 choice switched off
        step()  # warm-up
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            step()
        with torch.utils.flop_counter.FlopCounterMode(display=False) as flop_counter:
            step()
    seconds, flops = dict.fromkeys(BINS, 0.0), dict.fromkeys(BINS, 0)
    for event in profiler.key_averages():
        if event.key.startswith("aten::"):
            seconds[op_bin(event.key)] += event.self_cpu_time_total / 1e6
    for op, count in flop_counter.get_flop_counts()["Global"].items():
        flops[op_bin(f"aten::{op.__name__.split('.')[0]}")] += count
    step_time = sorted(times)[len(times) // 2]
    profiled = sum(seconds.values())
    return {"step": step_time, "flops": flops,
            **{name: value / profiled * step_time for name, value in seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--steps", type=int, default=4, help="timed steps (median) before the profiled one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(hardware_line("cpu"))
    peak = matmul_peak(torch.float32, "cpu", repeats=3, size=2048) / 1e9
    print(f"batch {args.batch_size} at {args.size}x{args.size}, "
          f"float32 matmul peak {peak:.0f} GFLOP/s")
    results = {backbone: measure(backbone, args.batch_size, args.size, args.steps) for backbone in ("today", "ours")}
    print("| backbone | s / step | convolution: s (share, GFLOP/s) | matmul: s (share, GFLOP/s) | other: s (share) |")
    print("|---|---|---|---|---|")
    for backbone, result in results.items():
        cells = [f"{result[name]:.3f} ({result[name] / result['step']:.0%}, "
                 f"{result['flops'][name] / result[name] / 1e9:.0f})" for name in BINS[:2]]
        cells.append(f"{result['other']:.3f} ({result['other'] / result['step']:.0%})")
        print(f"| {backbone} | {result['step']:.3f} | {' | '.join(cells)} |")
    today, ours = results["today"], results["ours"]
    print(f"speed-up {today['step'] / ours['step']:.2f}x; with every 'other' op of ours free it would be at most "
          f"{today['step'] / (ours['convolution'] + ours['matmul']):.2f}x")


if __name__ == "__main__":
    main()
