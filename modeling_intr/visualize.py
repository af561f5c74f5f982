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
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForImageClassification

from .interpret import (
    attention_rollout,
    evaluate_explanations,
    explain,
    gaussian_blur,
    gradient_rollout,
    localization_scores,
    peak_location,
    real_regions,
    resize_maps,
    top_predictions,
)
from .image_folders import image_column, is_image_file, label_column, list_classes
from .modeling_intr import IntrForImageClassification


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEFAULT_MODEL = EXAMPLES / "intr-digits"
DEFAULT_IMAGE = EXAMPLES / "sample_digit.png"


# ---------------------------------------------------------------- pictures


def overlay(image, attention_map, alpha=0.5, sigma=None):
    """
    Blend a colour-mapped (jet) attention map on an image, smoothed like the reference visualization.

    Args:
        image (`np.ndarray` `(height, width, 3)` `uint8`): the image.
        attention_map (`torch.Tensor` `(height, width)`): the map at the image's size.
        alpha (`float`): weight of the image in the blend.
        sigma (`float`, *optional*): Gaussian smoothing in pixels; defaults to `max(height, width) / 100` (at least 1).

    Returns:
        `np.ndarray` `(height, width, 3)` `uint8`.
    """
    sigma = max(1.0, max(image.shape[:2]) / 100) if sigma is None else sigma
    smooth = gaussian_blur(attention_map, sigma).numpy()
    smooth = (smooth - smooth.min()) / max(float(smooth.max() - smooth.min()), 1e-12)
    heat = colormaps["jet"](smooth)[..., :3] * 255
    return (alpha * image + (1 - alpha) * heat).round().clip(0, 255).astype(np.uint8)


def save_picture(picture, path):
    """Save a figure or an `uint8` RGB array as a PNG with a 256-colour palette (small files for noisy images)."""
    if isinstance(picture, Figure):
        canvas = FigureCanvasAgg(picture)
        canvas.draw()
        picture = np.asarray(canvas.buffer_rgba())[..., :3]
    palette = Image.fromarray(picture).quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    palette.save(path, optimize=True)


def _grid(num_rows, num_cols, cell=2.0):
    figure = Figure(figsize=(cell * num_cols, cell * num_rows + 0.5), dpi=80, layout="constrained")
    axes = figure.subplots(num_rows, num_cols, squeeze=False)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    return figure, axes


def draw_maps_panel(image, overlays, title):
    """
    The image and its overlays side by side.

    Args:
        image (`np.ndarray` `(height, width, 3)` `uint8`): the image.
        overlays (`dict[str, np.ndarray]`): axis title (map name) -> overlay from [`overlay`].
        title (`str`): figure title (class name and score).

    Returns:
        `matplotlib.figure.Figure`.
    """
    figure, axes = _grid(1, len(overlays) + 1)
    for axis, (name, picture) in zip(axes[0], {"image": image, **overlays}.items()):
        axis.imshow(picture)
        axis.set_title(name)
    figure.suptitle(title)
    return figure


def draw_top_q_panel(rows, title):
    """
    A grid of overlays: one row per class (the top-q classes), one column per head.

    Args:
        rows (`dict[str, dict[str, np.ndarray]]`): row title (class name and score) -> {column title: overlay}.
        title (`str`): figure title.

    Returns:
        `matplotlib.figure.Figure`.
    """
    figure, axes = _grid(len(rows), len(next(iter(rows.values()))), cell=1.6)
    for row, (row_title, overlays) in zip(axes, rows.items()):
        row[0].set_ylabel(row_title)
        for axis, (name, picture) in zip(row, overlays.items()):
            axis.imshow(picture)
            axis.set_title(name, fontsize="small")
    figure.suptitle(title)
    return figure


def draw_curves(evaluation):
    """Deletion and insertion curves of every method (AUC in the legend) from [`evaluate_explanations`] output."""
    figure = Figure(figsize=(11, 4.5), dpi=80, layout="constrained")
    axes = figure.subplots(1, 2)
    for axis, kind in zip(axes, ("deletion", "insertion")):
        for name, numbers in evaluation["methods"].items():
            style = {"linestyle": "--"} if name.endswith("random") else {}
            axis.plot(evaluation["fractions"], numbers[f"{kind}_curve"], label=f"{name} ({numbers[f'{kind}_auc']:.3f})",
                      **style)
        axis.set_xlabel(f"share of pixels {'removed' if kind == 'deletion' else 'revealed'}, most salient first")
        axis.set_ylabel("probability of the explained class")
        axis.set_title(f"{kind} (area under the curve)")
        axis.legend(fontsize="small")
    figure.suptitle(f"{evaluation['num_images']} images; {evaluation['baseline']}", fontsize="small")
    return figure


# ---------------------------------------------------------------- inputs


def _read_metadata(folder):
    """`{resolved image path: bbox}` from `folder/metadata.jsonl` (file names relative to `folder`), or `{}`."""
    metadata = Path(folder) / "metadata.jsonl"
    if not metadata.is_file():
        return {}
    records = [json.loads(line) for line in metadata.read_text().splitlines() if line.strip()]
    return {str((folder / r["file_name"]).resolve()): r["bbox"] for r in records if "bbox" in r}


def _find_box(path, cache):
    """The box of an image from a `metadata.jsonl` in its folder or the folder above, else None."""
    for folder in (path.parent, path.parent.parent):
        if folder not in cache:
            cache[folder] = _read_metadata(folder)
        if str(path.resolve()) in cache[folder]:
            return cache[folder][str(path.resolve())]
    return None


def _hub_split_items(args):
    """Items of one split of a `datasets` dataset (Hub name or local path) with an image and a class-label column."""
    import datasets  # the `train` extra; only this mode needs it

    split = datasets.load_dataset(args.dataset_name, split=args.split)
    image_name, label_name = image_column(split.features), label_column(split.features)
    labels = split[label_name] if label_name else [None] * len(split)
    boxes = split["bbox"] if "bbox" in split.column_names else [None] * len(split)
    return [
        {
            "path": f"{args.dataset_name}[{args.split}][{index}]",
            "name": f"{label}_{index:05d}",
            "load": lambda index=index: split[index][image_name],
            "true_class": label,
            "bbox": boxes[index],
        }
        for index, label in enumerate(labels)
        if args.class_index is None or label == args.class_index
    ]


def _folder_split_items(args):
    """Items of `DATASET_PATH/DATASET_NAME/SPLIT/<class>/*` (classes: sorted folder names)."""
    split = Path(args.dataset_path) / args.dataset_name / args.split
    classes = list_classes(split)
    if not classes:
        raise SystemExit(f"No class folders in {split}.")
    chosen = range(len(classes)) if args.class_index is None else [args.class_index]
    return [
        {"path": path, "name": f"{classes[class_index]}_{path.stem}", "true_class": class_index}
        for class_index in chosen
        for path in sorted((split / classes[class_index]).iterdir())
        if is_image_file(path)
    ]


def _path_items(args):
    """Items of the positional images and folders (searched recursively)."""
    items = []
    for given in map(Path, args.images or [DEFAULT_IMAGE]):
        if given.is_dir():
            paths = sorted(p for p in given.rglob("*") if is_image_file(p))
            items += [{"path": p, "name": "_".join(p.relative_to(given).with_suffix("").parts)} for p in paths]
        elif given.is_file():
            items.append({"path": given, "name": given.stem})
        else:
            raise SystemExit(f"{given} is neither an image nor a folder.")
    return items


def collect_images(args):
    """
    The images to explain: `[{"path", "name", "load", "true_class", "bbox"}]` (`load()` opens the image), from
    the positional paths, or one split of a dataset filtered by `--class_index`: the image-folder layout under
    `--dataset_path`, or without it the `datasets` dataset `--dataset_name` (as `run_finetune.py` reads them).
    Boxes come from `--bbox` (a single image), a `bbox` column, or a `metadata.jsonl` (see the module docstring).
    """
    if args.dataset_path:
        items = _folder_split_items(args)
    elif args.dataset_name:
        items = _hub_split_items(args)
    else:
        items = _path_items(args)
    if args.max_images and len(items) > args.max_images:  # evenly spaced, so every class of a sorted split is in
        items = items[:: len(items) // args.max_images][: args.max_images]
    if not items:
        raise SystemExit("No images found.")
    cache = {}
    for item in items:
        item.setdefault("true_class", None)
        item.setdefault("load", lambda path=item["path"]: Image.open(path))
        if "bbox" not in item:
            item["bbox"] = args.bbox if args.bbox and len(items) == 1 else _find_box(item["path"], cache)
    return items


# ---------------------------------------------------------------- explanations per batch


def _explain_intr(model, processor, images, class_ids, args):
    """INTR: per image, the maps of every head and the head average (original size and feature grid)."""
    results = explain(model, processor, images, class_ids, top_q=args.top_q, layer=args.layer)
    num_layers = model.config.decoder_layers
    explained = []
    for result in results:
        (class_id,) = result["class_ids"]
        maps = result["maps"][class_id]
        names = [f"head {k}" for k in range(maps["heads"].shape[0])] + ["head average"]
        explained.append({
            "image": result["image"],
            "predictions": result["predictions"],
            "class_id": class_id,
            "label": maps["label"],
            "score": maps["score"],
            "maps": dict(zip(names, [*maps["heads_resized"], maps["average_resized"]])),
            "coarse_maps": dict(zip(names, [*maps["heads"], maps["average"]])),
            "top_q": [(c, result["maps"][c]) for c in result["similar_class_ids"]],
            "layer": (args.layer % num_layers, num_layers),  # (0-based index, number of decoder layers)
        })
    return explained


def _explain_vit(model, processor, images, class_ids, args):
    """ViT family: per image, attention rollout and gradient rollout (original size and patch grid)."""
    pixel_values = processor(images, return_tensors="pt")["pixel_values"].to(model.device)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits.float().cpu()
    targets = [int(logits[i].argmax()) if c is None else c for i, c in enumerate(class_ids)]
    rollouts = {
        "attention rollout": attention_rollout(model, pixel_values, args.head_fusion, args.discard_ratio),
        "gradient rollout": gradient_rollout(model, pixel_values, targets, args.discard_ratio),
    }
    explained = []
    for index, (image, class_id) in enumerate(zip(images, targets)):
        rgb = np.asarray(image)
        coarse = {name: maps[index] for name, maps in rollouts.items()}
        explained.append({
            "image": rgb,
            "predictions": top_predictions(logits[index], model.config.id2label),
            "class_id": class_id,
            "label": str(model.config.id2label.get(class_id, class_id)),
            "score": float(logits[index].softmax(-1)[class_id]),
            "maps": {name: resize_maps(m, rgb.shape[:2]) for name, m in coarse.items()},
            "coarse_maps": coarse,
        })
    return explained


# ---------------------------------------------------------------- writing


def _draw_pictures(folder, explanation, kind, args):
    """Overlays and panels of one image."""
    image, maps = explanation["image"], explanation["maps"]
    title = f"{explanation['label']} ({explanation['score']:.2f})"
    if kind == "intr":
        heads = args.heads if args.heads is not None else range(len(maps) - 1)
        shown = {name: maps[name] for name in [f"head {k}" for k in heads] + ["head average"]}
        layer, num_layers = explanation["layer"]
        title += f", decoder layer {layer + 1} of {num_layers}"
    else:
        shown = maps
    overlays = {name: overlay(image, attention_map) for name, attention_map in shown.items()}
    for name, picture in overlays.items():
        save_picture(picture, folder / f"{name.replace(' ', '_')}.png")
    save_picture(draw_maps_panel(image, overlays, title), folder / ("heads_panel.png" if kind == "intr" else "panel.png"))
    if kind == "intr" and explanation["top_q"]:
        rows = {
            f"{m['label']} ({m['score']:.2f})": {
                name: overlays[name] if c == explanation["class_id"] else overlay(image, _class_map(m, name))
                for name in shown
            }
            for c, m in explanation["top_q"]
        }
        save_picture(draw_top_q_panel(rows, f"top-{len(rows)} classes by logit x heads"), folder / "top_q_panel.png")


def _write_summary(folder, item, explanation, kind, model_name, args):
    """`summary.json` of one image: predictions, and per map its peak and (with a box) the localization scores."""
    image, maps, box = explanation["image"], explanation["maps"], item["bbox"]
    scores = localization_scores(maps, box) if box is not None else {}
    summary = {
        "image": str(item["path"]),
        "image_size": list(image.shape[:2]),
        "model": model_name,
        "kind": kind,
        "true_class": item["true_class"],
        "bbox": box,
        "predictions": explanation["predictions"],
        "explained_class": {k: explanation[k] for k in ("class_id", "label", "score")},
        "maps": [
            {
                "name": name,
                "peak": list(peak_location(attention_map)),
                "peak_in_box": scores[name]["pointing_game"] if box is not None else None,
                "mass_in_box": scores[name]["mass_in_box"] if box is not None else None,
            }
            for name, attention_map in maps.items()
        ],
        "box_area_share": scores["random"]["mass_in_box"] if box is not None else None,
    }
    if kind == "intr":
        summary["layer"] = explanation["layer"][0]
        summary["top_q"] = [{"class_id": c, "label": m["label"], "score": m["score"]} for c, m in explanation["top_q"]]
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _class_map(class_maps, name):
    """The map called `name` (`head k` / `head average`) among one class's resized maps."""
    if name == "head average":
        return class_maps["average_resized"]
    return class_maps["heads_resized"][int(name.split()[-1])]


def _average_localization(summaries, prefix):
    """Mean pointing-game hit rate and mass in the box per map over the summaries with a box, plus the random floor."""
    boxed = [s for s in summaries if s["bbox"] is not None]
    if not boxed:
        return {}
    names = [m["name"] for m in boxed[0]["maps"]]
    scores = {
        f"{prefix}{name}": {
            "pointing_game": float(np.mean([s["maps"][i]["peak_in_box"] for s in boxed])),
            "mass_in_box": float(np.mean([s["maps"][i]["mass_in_box"] for s in boxed])),
        }
        for i, name in enumerate(names)
    }
    floor = float(np.mean([s["box_area_share"] for s in boxed]))
    scores[f"{prefix}random"] = {"pointing_game": floor, "mass_in_box": floor}
    return {"num_images": len(boxed), "scores": scores}


# ---------------------------------------------------------------- command line


def build_parser():
    parser = argparse.ArgumentParser(
        prog="intr-visualize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*", help=f"images or folders (default: {DEFAULT_IMAGE.name})")
    parser.add_argument("--model", action="append", help=f"model folder or Hub id, repeatable (default: {DEFAULT_MODEL})")
    parser.add_argument("--output_dir", default="outputs/explain")
    parser.add_argument("--dataset_path", help="root of an image-folder dataset: DATASET_PATH/DATASET_NAME/SPLIT/<class>/")
    parser.add_argument("--dataset_name", help="folder under --dataset_path, or (without it) a `datasets` dataset")
    parser.add_argument("--split", default="val", help="dataset split (folder name, or `datasets` split name)")
    parser.add_argument("--class_index", type=int, help="class to explain (and, with --dataset_path, to select)")
    parser.add_argument("--bbox", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="object box of a single image")
    parser.add_argument("--layer", type=int, default=-1, help="INTR decoder layer")
    parser.add_argument("--top_q", type=int, default=5, help="INTR: panel of the top-q classes by logit")
    parser.add_argument("--heads", type=int, nargs="+", help="INTR heads to draw (default: all)")
    parser.add_argument("--head_fusion", default="mean", choices=["mean", "max", "min"], help="ViT attention rollout")
    parser.add_argument("--discard_ratio", type=float, default=0.0, help="ViT rollouts")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_images", type=int, help="use at most this many images (evenly spaced)")
    parser.add_argument("--no_pictures", action="store_true", help="write the summaries (and scores) only")
    parser.add_argument("--faithfulness", action="store_true", help="deletion/insertion curves over all images")
    parser.add_argument("--baseline", default="blur", choices=["blur", "mean"], help="faithfulness: what pixels fade to")
    parser.add_argument("--steps", type=int, default=20, help="faithfulness: deletion/insertion steps")
    parser.add_argument("--seed", type=int, default=0, help="faithfulness: seed of the random maps")
    return parser


def _load(model_path):
    model = AutoModelForImageClassification.from_pretrained(model_path, attn_implementation="eager").eval()
    return model, AutoImageProcessor.from_pretrained(model_path)


def main(argv=None):
    """Run the command line (see the module docstring); returns the output folder."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset_path and not args.dataset_name:
        parser.error("--dataset_path needs --dataset_name (the dataset's folder under it).")
    items = collect_images(args)
    output_dir = Path(args.output_dir)
    faithfulness, localization, accuracy = {}, {}, {}
    for model_path in args.model or [DEFAULT_MODEL]:
        model, processor = _load(model_path)
        kind = "intr" if isinstance(model, IntrForImageClassification) else "vit"
        name = Path(str(model_path).rstrip("/")).name
        prefix = f"{name}: " if len(args.model or []) > 1 else ""
        summaries, coarse_maps, processed, class_ids = [], {}, [], []
        explain_batch = _explain_intr if kind == "intr" else _explain_vit
        with tqdm(total=len(items), unit="image", desc=name) as progress:
            for start in range(0, len(items), args.batch_size):
                batch = items[start : start + args.batch_size]
                images = [item["load"]().convert("RGB") for item in batch]
                wanted = [args.class_index] * len(batch)
                for item, explanation in zip(batch, explain_batch(model, processor, images, wanted, args)):
                    folder = output_dir / name / item["name"]
                    folder.mkdir(parents=True, exist_ok=True)
                    if not args.no_pictures:
                        _draw_pictures(folder, explanation, kind, args)
                    summaries.append(_write_summary(folder, item, explanation, kind, name, args))
                    if args.faithfulness:
                        for map_name, m in explanation["coarse_maps"].items():
                            coarse_maps.setdefault(f"{prefix}{map_name}", []).append(m)
                        class_ids.append(explanation["class_id"])
                if args.faithfulness:  # what the model saw, padding cropped off
                    inputs = processor(images, return_tensors="pt")
                    processed += real_regions(inputs["pixel_values"], inputs.get("pixel_mask"))
                progress.update(len(batch))
        localization.update(_average_localization(summaries, prefix).get("scores", {}))
        labelled = [s for s in summaries if s["true_class"] is not None]
        if labelled:
            accuracy[name] = float(np.mean([s["predictions"][0]["class_id"] == s["true_class"] for s in labelled]))
        if args.faithfulness:
            evaluation = evaluate_explanations(
                model, processed, coarse_maps, class_ids, steps=args.steps, baseline=args.baseline,
                batch_size=args.batch_size * 4, seed=args.seed, progress=True,
            )
            evaluation["methods"] = {
                (f"{prefix}random" if method == "random" else method): numbers
                for method, numbers in evaluation["methods"].items()
            }
            faithfulness = {**evaluation, "methods": {**faithfulness.get("methods", {}), **evaluation["methods"]}}
    if localization:
        (output_dir / "localization.json").write_text(json.dumps(
            {"num_images": sum(i["bbox"] is not None for i in items), "accuracy": accuracy, "scores": localization,
             "random": "a uniformly random map: its expected score is the share of the image the box covers"},
            indent=1,
        ))
    if faithfulness:
        (output_dir / "faithfulness.json").write_text(json.dumps(faithfulness, indent=1))
        save_picture(draw_curves(faithfulness), output_dir / "faithfulness.png")
    print(f"Wrote explanations of {len(items)} image(s) to {output_dir}")
    return output_dir


if __name__ == "__main__":
    main()
