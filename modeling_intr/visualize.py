"""Pictures of explanations and the `intr-visualize` command line (needs the `viz` extra: matplotlib).

    python -m modeling_intr.visualize                       # the embedded digits model on examples/sample_digit.png
    python -m modeling_intr.visualize --model DIR_OR_REPO --output_dir OUT IMAGE_OR_FOLDER [...]
    python -m modeling_intr.visualize --model DIR --dataset_path ROOT --dataset_name digits --split val --class_index 3
    python -m modeling_intr.visualize --model DIR --dataset_name HUB_DATASET --split validation --class_index 3

For an INTR model every image gets, for the explained class (predicted, or `--class_index`): an overlay per head and
for the head average (`head_<k>.png`, `head_average.png`), a panel of the image and all heads (`heads_panel.png`), a
panel of the top-q classes x heads (`top_q_panel.png`) and a `summary.json` (predictions; per map the peak in
original-image pixels and, when the image has a box, the share of attention mass inside it). A ViT-family classifier
(`--model` again to compare) gets attention-rollout and gradient-rollout overlays and a panel instead. A box comes
from a `metadata.jsonl` (`file_name`, `bbox` = [x0, y0, x1, y1], x1/y1 exclusive) next to the image or one folder up
(the layout of `examples/make_digits_dataset.py`), or from `--bbox` for a single image. With boxes, `localization.json`
averages the pointing game and the mass in the box over the images (and gives the accuracy when the true classes are
known). `--faithfulness` adds deletion/insertion curves of every map and of a random map (`faithfulness.json`,
`faithfulness.png`); `--no_pictures` writes the numbers only. Outputs: OUT/<model name>/<image name>/....
Images are read and converted to RGB by the image processor's one rule (`to_rgb_array`), so the pixels explained
are the pixels training saw; `--dtype bfloat16` loads the model in bfloat16 (maps still come out as float32).

For each image it prints the prediction and the folder its files went to. Bad input (a missing model or image path,
`--class_index`, `--layer` or `--heads` out of range) prints one `error: ...` line and exits with status 1. An image
that cannot be read or explained (not an image, truncated, too thin to resize) is skipped with a warning and nothing
of it is written; the others are finished, the skipped ones are listed at the end, and the exit status is 1.
Without arguments it explains the sample image with the sample model of a repository checkout (`examples/`); an
installed package without them says what to pass.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .faithfulness import evaluate_explanations
from .image_processing_intr import crop_padded_batch
from .modeling_intr import IntrForImageClassification
from .visualize_batches import explain_items
from .extras import MissingDependencyError, optional_dependencies
from .visualize_inputs import DEFAULT_IMAGE, VisualizeError, collect_images, load_model, model_sources


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="intr-visualize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", help=f"images or folders of images (default: the sample "
                        f"{DEFAULT_IMAGE.name} of a repository checkout)")
    parser.add_argument("--model", action="append", help="model folder or Hub id; repeat it to compare models "
                        "(default: examples/intr-digits of a repository checkout)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype to load the model in")
    parser.add_argument("--output_dir", default="outputs/explain", help="where OUTPUT_DIR/<model>/<image>/ goes")
    parser.add_argument("--dataset_path", help="root of an image-folder dataset: DATASET_PATH/DATASET_NAME/SPLIT/<class>/")
    parser.add_argument("--dataset_name", help="folder under --dataset_path, or (without it) a `datasets` dataset")
    parser.add_argument("--split", default="val", help="dataset split (folder name, or `datasets` split name)")
    parser.add_argument("--class_index", type=int, help="class to explain (and, with a dataset, to select)")
    parser.add_argument("--bbox", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                        help="object box of a single image, in its pixels (drawn on the overlays, scored)")
    parser.add_argument("--layer", type=int, default=-1, help="INTR decoder layer whose cross-attention is shown")
    parser.add_argument("--top_q", type=int, default=5, help="INTR: panel of the top-q classes by logit (0: none)")
    parser.add_argument("--heads", type=int, nargs="+", help="INTR heads to draw (default: all)")
    parser.add_argument("--head_fusion", default="mean", choices=["mean", "max", "min"],
                        help="ViT attention rollout: how heads are fused")
    parser.add_argument("--discard_ratio", type=float, default=0.0,
                        help="ViT rollouts: share of the smallest attention weights set to zero")
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--max_images", type=int, help="use at most this many images (evenly spaced)")
    parser.add_argument("--no_pictures", action="store_true", help="write the summaries (and scores) only")
    parser.add_argument("--faithfulness", action="store_true", help="deletion/insertion curves over all images")
    parser.add_argument("--baseline", default="blur", choices=["blur", "mean"], help="faithfulness: what pixels fade to")
    parser.add_argument("--steps", type=int, default=20, help="faithfulness: deletion/insertion steps")
    parser.add_argument("--seed", type=int, default=0, help="faithfulness: seed of the random maps")
    return parser


def _check_model_options(model, kind, args):
    """Options that depend on the model: the class index, the decoder layer and the heads."""
    num_labels = model.config.num_labels
    if args.class_index is not None and not 0 <= args.class_index < num_labels:
        raise VisualizeError(f"--class_index {args.class_index} is out of range: the model has {num_labels} classes "
                             f"(0 to {num_labels - 1}).")
    if kind == "intr":
        num_layers, num_heads = model.config.decoder_layers, model.config.num_attention_heads
        if not -num_layers <= args.layer < num_layers:
            raise VisualizeError(f"--layer {args.layer} is out of range: the decoder has {num_layers} layers.")
        if args.heads and not all(0 <= head < num_heads for head in args.heads):
            raise VisualizeError(f"--heads {args.heads} out of range: the model has {num_heads} heads (0 to "
                                 f"{num_heads - 1}).")


def visualize_model(model_path, items, args, output_dir, many_models):
    """Explain every item with one model and write its outputs. Returns (summaries, faithfulness or None, skipped)."""
    from .visualize_outputs import write_image_outputs  # matplotlib: imported (and checked) by `run`

    model, processor = load_model(model_path, DTYPES[args.dtype])
    kind = "intr" if isinstance(model, IntrForImageClassification) else "vit"
    _check_model_options(model, kind, args)
    name = Path(str(model_path).rstrip("/")).name
    prefix = f"{name}: " if many_models else ""
    summaries, skipped, coarse_maps, processed, class_ids = [], [], {}, [], []
    for item, explanation in explain_items(model, processor, kind, items, args, name):
        if isinstance(explanation, str):
            if len(items) > 1:  # a single image's failure is the final error line alone
                tqdm.write(f"warning: skipped {item['path']}: {explanation}", file=sys.stderr)
            skipped.append(f"{item['path']}: {explanation}")
            continue
        folder = output_dir / name / item["name"]
        summaries.append(write_image_outputs(folder, item, explanation, kind, name, args))
        tqdm.write(f"{item['path']}: {name} predicts {explanation['predictions'][0]['label']} "
                   f"({explanation['predictions'][0]['score']:.2f}) -> {folder}")
        if args.faithfulness:
            for entry in explanation["maps"]:
                coarse_maps.setdefault(f"{prefix}{entry['name']}", []).append(entry["coarse"])
            class_ids.append(explanation["class_id"])
            inputs = processor([explanation["image"]], return_tensors="pt")  # what the model saw, padding cropped
            processed += crop_padded_batch(inputs["pixel_values"], inputs.get("pixel_mask"))
    evaluation = None
    if args.faithfulness and processed:
        evaluation = evaluate_explanations(
            model, processed, coarse_maps, class_ids, steps=args.steps, baseline=args.baseline,
            batch_size=args.batch_size * 4, seed=args.seed, progress=True,
        )
        evaluation["methods"] = {
            (f"{prefix}random" if method == "random" else method): numbers
            for method, numbers in evaluation["methods"].items()
        }
    return summaries, evaluation, skipped


def run(args):
    """
    Read the inputs, explain them with every model, write the outputs. Returns (output folder, skipped lines).
    Without matplotlib (the `viz` extra) raises `MissingDependencyError` saying what to install.
    """
    with optional_dependencies("intr-visualize", "'intr-transformers[viz]'", ["matplotlib"]):
        from .visualize_outputs import average_localization, write_totals  # the pictures

    model_paths = model_sources(args)
    items = collect_images(args)
    output_dir = Path(args.output_dir)
    faithfulness, localization, accuracy, skipped = {}, {}, {}, []
    for model_path in model_paths:
        summaries, evaluation, model_skipped = visualize_model(
            model_path, items, args, output_dir, len(model_paths) > 1
        )
        skipped += [line for line in model_skipped if line not in skipped]
        name = Path(str(model_path).rstrip("/")).name
        localization.update(average_localization(summaries, f"{name}: " if len(model_paths) > 1 else "")
                            .get("scores", {}))
        labelled = [s for s in summaries if s["true_class"] is not None]
        if labelled:
            accuracy[name] = float(np.mean([s["predictions"][0]["class_id"] == s["true_class"] for s in labelled]))
        if evaluation:
            faithfulness = {**evaluation, "methods": {**faithfulness.get("methods", {}), **evaluation["methods"]}}
    write_totals(output_dir, items, localization, accuracy, faithfulness)
    return output_dir, skipped


def main(argv=None):
    """
    Run the command line (see the module docstring); returns the output folder. Bad input prints one `error: ...`
    line and exits with status 1; unreadable images are skipped with a warning, listed at the end, and make the
    exit status 1 after every other image was written.
    """
    args = build_parser().parse_args(argv)
    try:
        output_dir, skipped = run(args)
    except (VisualizeError, MissingDependencyError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"Wrote explanations to {output_dir}")
    if len(skipped) == 1:
        print(f"error: could not explain {skipped[0]}", file=sys.stderr)
        raise SystemExit(1)
    if skipped:
        print(f"error: skipped {len(skipped)} image(s) that could not be explained:", file=sys.stderr)
        for line in skipped:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(1)
    return output_dir


if __name__ == "__main__":
    main()
