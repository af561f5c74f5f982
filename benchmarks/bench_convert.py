#!/usr/bin/env python
"""Time and peak memory of converting full-size DETR-R50 / INTR-R50 checkpoints.

    python benchmarks/bench_convert.py [--layouts detr_r50_original hf_detr_resnet50 ...] [--num_labels 200]

For each layout of `../shared/fixtures/checkpoint_layouts`, writes a checkpoint of random float32 weights with exactly
the real release's names and shapes (`.pth` with `args` for the reference layouts, `.safetensors` for the Hugging Face
ones), then converts it in a fresh subprocess with `convert_checkpoint`: the whole pipeline (read safely, detect the
layout, map the names, config, class queries, build the model) and the atomic folder write with its model card.
Reported: wall time of the conversion, and peak resident memory above the process's resident memory after the imports
(Linux `/proc/self/status` VmHWM, reset after the imports), against the file size.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = REPO.parent / "shared" / "fixtures" / "checkpoint_layouts"
MIB = 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def child(checkpoint: str, output_dir: str, num_labels: int) -> None:
    """Convert in this (fresh) process and print the measurements as JSON."""
    sys.path.insert(0, str(REPO))
    from modeling_intr.convert import convert_checkpoint

    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start = time.perf_counter()
    convert_checkpoint(checkpoint, output_dir, num_labels=num_labels)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    print(json.dumps({"seconds": seconds, "baseline_kib": baseline, "peak_kib": peak}))


def write_checkpoint(layout: str, folder: Path) -> Path:
    """A checkpoint with random float32 tensors named and shaped as the real `layout` file."""
    import torch
    from safetensors.torch import save_file

    shapes = json.loads((LAYOUTS / f"{layout}.json").read_text())["keys"]
    state_dict = {name: torch.rand(shape) for name, shape in shapes.items()}
    if layout.startswith("hf_"):
        path = folder / f"{layout}.safetensors"
        save_file(state_dict, path)
    else:
        path = folder / f"{layout}.pth"
        torch.save({"model": state_dict, "args": argparse.Namespace(dilation=False, nheads=8)}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layouts", nargs="+", default=sorted(path.stem for path in LAYOUTS.glob("*.json")))
    parser.add_argument("--num_labels", type=int, default=200)
    parser.add_argument("--child", nargs=3, metavar=("CHECKPOINT", "OUTPUT_DIR", "NUM_LABELS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    import torch

    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'layout':<28} {'file MiB':>9} {'seconds':>8} {'peak above imports MiB':>23} {'x file':>7}")
    for layout in args.layouts:
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = write_checkpoint(layout, Path(folder))
            result = subprocess.run(
                [sys.executable, __file__, "--child", str(checkpoint), str(Path(folder) / "out"), str(args.num_labels)],
                check=True, capture_output=True, text=True,
            )
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            size = checkpoint.stat().st_size / MIB
            peak = (measured["peak_kib"] - measured["baseline_kib"]) / 1024
            print(f"{layout:<28} {size:>9.1f} {measured['seconds']:>8.2f} {peak:>23.1f} {peak / size:>7.2f}")


if __name__ == "__main__":
    main()
