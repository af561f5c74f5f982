"""Peak memory of `evaluate_explanations` (deletion / insertion curves) on one 800x1067 image with five maps plus the
random floor (six methods), 20 steps, for several batch sizes, each in a fresh process (peak RSS is per process).

The model is a stand-in that costs no memory (mean colour -> logits), so the added memory is the masked copies of the
image. For comparison the script prints what building every masked copy at once (the previous implementation) would
hold: 6 methods x 2 curves x 21 steps copies of the image, in float32.

    python benchmarks/bench_faithfulness_memory.py [--batch_sizes 16 64]
"""

import argparse
import resource
import subprocess
import sys
import types

import torch

HEIGHT, WIDTH, NUM_MAPS, STEPS = 800, 1067, 5, 20


class MeanColourModel(torch.nn.Module):
    """logits = Linear(mean colour): a classifier whose own memory is negligible."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)

    def forward(self, pixel_values):
        return types.SimpleNamespace(logits=self.linear(pixel_values.mean((-2, -1))))

    @property
    def device(self):
        return self.linear.weight.device

    @property
    def dtype(self):
        return self.linear.weight.dtype


def child(batch_size: int) -> None:
    from modeling_intr import evaluate_explanations

    torch.manual_seed(0)
    image = torch.randn(1, 3, HEIGHT, WIDTH)
    maps = {f"map {k}": [torch.rand(25, 34)] for k in range(NUM_MAPS)}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.no_grad():
        evaluate_explanations(MeanColourModel(), image, maps, [1], steps=STEPS, baseline="mean", batch_size=batch_size)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{after - before:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child)
    methods = NUM_MAPS + 1
    all_at_once = methods * 2 * (STEPS + 1) * 3 * HEIGHT * WIDTH * 4 / 2**20
    print(f"one {HEIGHT}x{WIDTH} image, {methods} methods, {STEPS} steps; every masked copy at once would hold "
          f"{all_at_once:.0f} MiB")
    for batch_size in args.batch_sizes:
        added = subprocess.run([sys.executable, __file__, "--child", str(batch_size)], check=True,
                               capture_output=True, text=True).stdout.strip()
        print(f"batch_size {batch_size:3d}: peak RSS added by evaluate_explanations {added} MiB "
              f"({float(added) / all_at_once:.2f}x the all-at-once copies)")


if __name__ == "__main__":
    main()
