"""Forward throughput of INTR at the reference setting, against the machine's own matmul peak.

ResNet-50 INTR, 200 classes, one 800x1028 image (the CUB photo after the reference transform), batch 1, eval mode:
float32 and bf16 autocast, with and without `output_attentions`. Model FLOPs are counted with
`torch.utils.flop_counter` (multiply-adds x 2); the peak is a large `torch.mm` in the same dtype. Prints a markdown table.

    python benchmarks/bench_forward.py [--repeats 5] [--device cpu]
"""

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from modeling_intr import IntrConfig, IntrForImageClassification


def best_seconds(function, repeats: int, device: str) -> float:
    function()  # warm-up
    timings = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    return min(timings)


def matmul_peak(dtype: torch.dtype, device: str, repeats: int, size: int = 4096) -> float:
    """FLOP/s of a size x size x size matrix product."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / best_seconds(lambda: torch.mm(a, b), repeats, device)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = IntrForImageClassification(IntrConfig(num_labels=200)).eval().to(args.device)
    pixel_values = torch.randn(1, 3, 800, 1028, device=args.device)
    with FlopCounterMode(display=False) as counter:  # (its module tracker needs autograd on)
        model(pixel_values)
    model_flops = counter.get_total_flops()

    peaks = {dtype: matmul_peak(dtype, args.device, args.repeats) for dtype in (torch.float32, torch.bfloat16)}
    settings = [(dtype, attentions) for dtype in (torch.float32, torch.bfloat16) for attentions in (False, True)]

    def forward(dtype, output_attentions):
        with torch.no_grad(), torch.autocast(args.device, dtype=dtype, enabled=dtype != torch.float32):
            model(pixel_values, output_attentions=output_attentions)

    # Interleaved rounds (every setting once per round), best of each: drift in machine load hits all settings alike.
    best = {setting: float("inf") for setting in settings}
    for _ in range(args.repeats):
        for setting in settings:
            best[setting] = min(best[setting], best_seconds(lambda: forward(*setting), 1, args.device))
    rows = [(dtype, attentions, best[dtype, attentions], model_flops / best[dtype, attentions] / peaks[dtype])
            for dtype, attentions in settings]

    print(f"device: {args.device}, threads: {torch.get_num_threads()}, model GFLOP/forward: {model_flops / 1e9:.1f}")
    print(f"matmul peak: float32 {peaks[torch.float32] / 1e9:.1f} GFLOP/s, bf16 {peaks[torch.bfloat16] / 1e9:.1f} GFLOP/s")
    print("\n| precision | output_attentions | images/s | ms/image | model FLOP utilisation |")
    print("|---|---|---|---|---|")
    for dtype, output_attentions, seconds, utilisation in rows:
        name = "float32" if dtype == torch.float32 else "bf16 autocast"
        print(f"| {name} | {output_attentions} | {1 / seconds:.3f} | {1000 * seconds:.0f} | {100 * utilisation:.0f}% |")
    seconds = {(dtype, attn): s for dtype, attn, s, _ in rows}
    print(f"\nbf16 speed-up over float32: {seconds[torch.float32, False] / seconds[torch.bfloat16, False]:.2f}x")
    for dtype in (torch.float32, torch.bfloat16):
        extra = seconds[dtype, True] / seconds[dtype, False] - 1
        print(f"output_attentions extra cost ({dtype}): {100 * extra:+.1f}%")


if __name__ == "__main__":
    main()
