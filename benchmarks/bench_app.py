"""Timings of the INTR Explorer's callbacks (app.py) on the sample digit, in one process, CPU: the first explanation
of an image (one forward + every layer's maps), and re-rendering for another class or decoder layer (from the cached
maps, no forward). Add --vit to show the ViT rollouts beside INTR as `python app.py --vit` does.

    python benchmarks/bench_app.py [--vit] [--repeats 5]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import app  # noqa: E402  (sets OMP_WAIT_POLICY before torch is imported, as when the app runs)


def milliseconds(call) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vit", action="store_true", help="also the ViT baseline (examples/vit-digits)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    vit = app.load_classifier(app.EXAMPLES / "vit-digits") if args.vit else (None, None)
    explorer = app.Explorer(*app.load_classifier(app.DEFAULT_MODEL), *vit)
    sample = str(app.SAMPLE_IMAGES[0])
    first_call = milliseconds(lambda: explorer.on_upload(sample, -1, 0.5))
    uploads = [milliseconds(lambda: explorer.on_upload(sample, -1, 0.5)) for _ in range(args.repeats)]
    explanation = explorer.on_upload(sample, -1, 0.5)[0]
    num_classes = explorer.model.config.num_labels
    classes = [milliseconds(lambda c=c: explorer.render(explanation, c, -1, 0.5)) for c in range(num_classes)] * args.repeats
    layers = [milliseconds(lambda l=l: explorer.render(explanation, 0, l, 0.5))
              for l in range(explorer.model.config.decoder_layers)] * args.repeats
    print(f"INTR Explorer{' with --vit' if args.vit else ''}, sample digit, CPU:")
    print(f"  first explanation   {first_call:7.0f} ms first call, {statistics.median(uploads):5.0f} ms median of "
          f"{args.repeats}")
    print(f"  class switch        {statistics.median(classes):7.0f} ms median, {max(classes):5.0f} ms max "
          f"({len(classes)} renders; target < 150 ms)")
    print(f"  layer switch        {statistics.median(layers):7.0f} ms median")


if __name__ == "__main__":
    main()
