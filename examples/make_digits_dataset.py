"""Build the "digits on a canvas" image-folder dataset that the shipped `examples/intr-digits` model is trained on.

scikit-learn's handwritten digits (1797 grayscale 8x8 images, installed with the package, no download) are upscaled
to a random size and pasted at a random position on a larger canvas with a random amount of background noise, so that
a classifier has to find the digit first, and INTR's attention maps have something to localize. The output is the
reference INTR image-folder layout, which `run_finetune.py` reads with `datasets`' imagefolder loader:

    OUTPUT/digits/train/<class>/<index>.png, OUTPUT/digits/val/<class>/<index>.png
    OUTPUT/digits/{train,val}/metadata.jsonl   one line per image: file_name, bbox = [x0, y0, x1, y1] (canvas pixels,
                                               x1/y1 exclusive: the tight box of the digit's ink), digit_size

The split is stratified and, like every random choice here, deterministic for a given `--seed`.

    python examples/make_digits_dataset.py --output_dir data     # 1438 train / 359 val images, 128x128, digits 48-96 px
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from modeling_intr.extras import optional_dependencies
from modeling_intr.image_folders import is_image_file, list_classes

with optional_dependencies("make_digits_dataset.py", "scikit-learn", ["sklearn"], command_line=__name__ == "__main__"):
    from sklearn.datasets import load_digits


def render_digit(digit: np.ndarray, canvas_size: int, digit_size: int, rng: np.random.Generator):
    """
    Paste one 8x8 digit (values 0..16) upscaled to `digit_size` pixels at a random position on a noisy canvas.

    Returns the `uint8` canvas `(canvas_size, canvas_size)` and the tight box `[x0, y0, x1, y1]` of the digit's ink.
    """
    ink = np.asarray(Image.fromarray(digit / 16.0).resize((digit_size, digit_size), Image.BILINEAR))
    ink = np.clip(ink, 0.0, 1.0) * rng.uniform(150, 255)
    background = rng.uniform(0, 60)
    noise_std = rng.uniform(0, 40)  # from an almost blank canvas to a noisy one
    canvas = background + rng.normal(0, noise_std, (canvas_size, canvas_size))
    top, left = rng.integers(0, canvas_size - digit_size + 1, size=2)
    window = canvas[top : top + digit_size, left : left + digit_size]
    canvas[top : top + digit_size, left : left + digit_size] = np.maximum(window, ink)
    rows, columns = np.nonzero(ink > 0.25 * ink.max())
    box = [int(left + columns.min()), int(top + rows.min()), int(left + columns.max() + 1), int(top + rows.max() + 1)]
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8), box


def make_digits_dataset(
    output_dir: str | Path,
    canvas_size: int = 128,
    min_digit_size: int = 48,
    max_digit_size: int = 96,
    val_fraction: float = 0.2,
    max_per_class: int | None = None,
    seed: int = 0,
) -> Path:
    """Write `output_dir/digits/{train,val}` (see the module docstring) and return `output_dir/digits`."""
    if not 8 <= min_digit_size <= max_digit_size <= canvas_size:
        raise ValueError(f"Need 8 <= min_digit_size <= max_digit_size <= canvas_size, got "
                         f"{min_digit_size}, {max_digit_size}, {canvas_size}.")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    root = Path(output_dir) / "digits"
    records = {"train": [], "val": []}
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))[:max_per_class]
        num_val = max(1, round(len(indices) * val_fraction))
        for split, split_indices in (("val", indices[:num_val]), ("train", indices[num_val:])):
            (root / split / str(label)).mkdir(parents=True, exist_ok=True)
            for index in split_indices:
                digit_size = int(rng.integers(min_digit_size, max_digit_size + 1))
                canvas, box = render_digit(digits.images[index], canvas_size, digit_size, rng)
                file_name = f"{label}/{index:04d}.png"
                Image.fromarray(canvas, mode="L").save(root / split / file_name)
                records[split].append({"file_name": file_name, "bbox": box, "digit_size": digit_size})
    for split, split_records in records.items():
        with open(root / split / "metadata.jsonl", "w") as file:
            file.writelines(json.dumps(record) + "\n" for record in split_records)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="folder that receives digits/{train,val}")
    parser.add_argument("--canvas_size", type=int, default=128, help="side of the square canvas, pixels")
    parser.add_argument("--min_digit_size", type=int, default=48, help="smallest side of a pasted digit, pixels")
    parser.add_argument("--max_digit_size", type=int, default=96, help="largest side of a pasted digit, pixels")
    parser.add_argument("--val_fraction", type=float, default=0.2, help="share of each class in the val split")
    parser.add_argument("--max_per_class", type=int, default=None, help="use at most this many digits per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    args = parser.parse_args(argv)
    root = make_digits_dataset(**vars(args))
    for split in ("train", "val"):
        count = sum(is_image_file(path) for name in list_classes(root / split) for path in (root / split / name).iterdir())
        print(f"{split}: {count} images in {root / split}")


if __name__ == "__main__":
    main()
