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
import json
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForImageClassification

from .image_folders import image_column, is_image_file, label_column, list_classes
from .image_processing_intr import crop_padded_batch, load_image, resize_maps, to_rgb_array
from .interpret import (
    attention_rollout,
    evaluate_explanations,
    explain,
    gaussian_blur,
    gradient_rollout,
    localization_scores,
    peak_location,
    top_predictions,
)
from .modeling_intr import IntrForImageClassification


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEFAULT_MODEL = EXAMPLES / "intr-digits"
DEFAULT_IMAGE = EXAMPLES / "sample_digit.png"


# ---------------------------------------------------------------- pictures


def _smoothed(attention_map, image_size, sigma=None):
    """The map smoothed like the reference visualization: Gaussian, `sigma` defaults to max(h, w) / 100 (>= 1)."""
    sigma = max(1.0, max(image_size) / 100) if sigma is None else sigma
    return gaussian_blur(attention_map, sigma).numpy()


def overlay(image, attention_map, alpha=0.5, sigma=None, box=None):
    """
    Blend a colour-mapped (jet) attention map on an image, smoothed like the reference visualization.

    Args:
        image (`np.ndarray` `(height, width, 3)` `uint8`): the image.
        attention_map (`torch.Tensor` `(height, width)`): the map at the image's size.
        alpha (`float`): weight of the image in the blend.
        sigma (`float`, *optional*): Gaussian smoothing in pixels; defaults to `max(height, width) / 100` (at least 1).
        box (`list[float]`, *optional*): `[x0, y0, x1, y1]` in image pixels, drawn as a white rectangle.

    Returns:
        `np.ndarray` `(height, width, 3)` `uint8`.
    """
    smooth = _smoothed(attention_map, image.shape[:2], sigma)
    smooth = (smooth - smooth.min()) / max(float(smooth.max() - smooth.min()), 1e-12)
    heat = colormaps["jet"](smooth)[..., :3] * 255
    blended = (alpha * image + (1 - alpha) * heat).round().clip(0, 255).astype(np.uint8)
    if box is None:
        return blended
    picture = Image.fromarray(blended)
    x0, y0, x1, y1 = (float(v) for v in box)
    width = max(1, round(max(image.shape[:2]) / 150))
    ImageDraw.Draw(picture).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 255), width=width)
    return np.asarray(picture)


def draw_single_map(overlay_picture, attention_map, title):
    """
    One overlay with a title and a colour scale of the (smoothed) attention values it shows.

    Args:
        overlay_picture (`np.ndarray` `(height, width, 3)` `uint8`): from [`overlay`].
        attention_map (`torch.Tensor` `(height, width)`): the map drawn in it.
        title (`str`): class, score, layer and map name.

    Returns:
        `matplotlib.figure.Figure`.
    """
    smooth = _smoothed(attention_map, overlay_picture.shape[:2])
    figure = Figure(figsize=(4.6, 4.2), dpi=80, layout="constrained")
    axis = figure.subplots()
    axis.imshow(overlay_picture)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize="medium")
    scale = ScalarMappable(norm=Normalize(float(smooth.min()), float(smooth.max())), cmap=colormaps["jet"])
    figure.colorbar(scale, ax=axis, shrink=0.8, label="attention (smoothed)")
    return figure


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


class VisualizeError(Exception):
    """An expected failure of the command line (bad input): printed as one `error: ...` line, no traceback."""


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

    try:
        split = datasets.load_dataset(args.dataset_name, split=args.split)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
        raise VisualizeError(f"cannot load split {args.split!r} of dataset {args.dataset_name!r}: {error}") from None
    image_name, label_name = image_column(split.features), label_column(split.features)
    if image_name is None:
        raise VisualizeError(f"dataset {args.dataset_name!r} has no image column: {split.features}.")
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
    """Items of `DATASET_PATH/DATASET_NAME/SPLIT/<class>/*` (classes: `image_folders.list_classes`)."""
    split = Path(args.dataset_path) / args.dataset_name / args.split
    classes = list_classes(split)
    if not classes:
        raise VisualizeError(f"no class folders in {split}; expected {split}/<class>/<image>.")
    if args.class_index is not None and not 0 <= args.class_index < len(classes):
        raise VisualizeError(
            f"--class_index {args.class_index} is out of range: {split} has {len(classes)} classes (0 to "
            f"{len(classes) - 1})."
        )
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
        elif given == DEFAULT_IMAGE:
            raise VisualizeError(_NO_SAMPLE)
        else:
            raise VisualizeError(f"{given} does not exist (pass image files or folders of images).")
    return items


_NO_SAMPLE = (
    "no image given, and the sample image and model (examples/ of the repository) are not installed with the "
    "package: pass images and a model, e.g. `intr-visualize photo.jpg --model DIR_OR_HUB_ID`."
)


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
        raise VisualizeError("no images found in the given paths or split.")
    if args.bbox and len(items) > 1:
        raise VisualizeError(f"--bbox is the box of a single image, but {len(items)} images were given.")
    cache = {}
    for item in items:
        item.setdefault("true_class", None)
        item.setdefault("load", lambda path=item["path"]: load_image(path))
        if "bbox" not in item:
            item["bbox"] = args.bbox if args.bbox else _find_box(item["path"], cache)
    return items


def read_image(item):
    """The item's image as 8-bit RGB `(height, width, 3)`, by the image processor's one conversion rule (16-bit
    scaled, EXIF orientation applied, ...): the pixels training saw. Raises `ValueError` naming the problem."""
    return to_rgb_array(item["load"]())


def load_model(model_path, dtype=None):
    """The classifier (eager attention, eval mode, in `dtype`) and its image processor; `VisualizeError` if absent."""
    text = str(model_path)
    local = Path(text).expanduser()
    looks_local = local.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if looks_local and not local.is_dir():
        raise VisualizeError(
            f"model folder {text} does not exist; pass a folder written by save_pretrained or a Hub id."
        )
    try:
        model = AutoModelForImageClassification.from_pretrained(text, attn_implementation="eager", dtype=dtype)
        processor = AutoImageProcessor.from_pretrained(text)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VisualizeError(f"cannot load model {text}: {reason}") from None
    return model.eval(), processor


# ---------------------------------------------------------------- explanations per batch


def _map_entry(name, head, resized, coarse):
    """One explained map: display `name`, file stem, `head` index (None: average or a rollout), resized and coarse."""
    return {"name": name, "file": name.replace(" ", "_"), "head": head, "map": resized, "coarse": coarse}


def _explain_intr(model, processor, images, class_ids, args):
    """INTR: per image, the maps of every head and of the head average (original size and feature grid)."""
    results = explain(model, processor, images, class_ids, top_q=args.top_q, layer=args.layer)
    num_layers = model.config.decoder_layers
    explained = []
    for result in results:
        (class_id,) = result["class_ids"]
        maps = result["maps"][class_id]
        entries = [_map_entry(f"head {k}", k, resized, coarse)
                   for k, (resized, coarse) in enumerate(zip(maps["heads_resized"], maps["heads"]))]
        entries.append(_map_entry("head average", None, maps["average_resized"], maps["average"]))
        explained.append({
            "image": result["image"],
            "predictions": result["predictions"],
            "class_id": class_id,
            "label": maps["label"],
            "score": maps["score"],
            "maps": entries,
            "top_q": [(c, result["maps"][c]) for c in result["similar_class_ids"]],
            "layer": (args.layer % num_layers, num_layers),  # (0-based index, number of decoder layers)
        })
    return explained


def _explain_vit(model, processor, images, class_ids, args):
    """ViT family: per image, attention rollout and gradient rollout (original size and patch grid)."""
    pixel_values = processor(images, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits.float().cpu()
    targets = [int(logits[i].argmax()) if c is None else c for i, c in enumerate(class_ids)]
    rollouts = {
        "attention rollout": attention_rollout(model, pixel_values, args.head_fusion, args.discard_ratio),
        "gradient rollout": gradient_rollout(model, pixel_values, targets, args.discard_ratio),
    }
    explained = []
    for index, (image, class_id) in enumerate(zip(images, targets)):
        explained.append({
            "image": image,
            "predictions": top_predictions(logits[index], model.config.id2label),
            "class_id": class_id,
            "label": str(model.config.id2label.get(class_id, class_id)),
            "score": float(logits[index].softmax(-1)[class_id]),
            "maps": [_map_entry(name, None, resize_maps(maps[index], image.shape[:2]), maps[index])
                     for name, maps in rollouts.items()],
        })
    return explained


def explain_batch(kind, model, processor, images, class_ids, args):
    """Explanations of a batch of RGB images, one dict per image (`image`, `predictions`, `class_id`, `label`,
    `score`, `maps`: a list of `_map_entry`, and for INTR `top_q` and `layer`)."""
    explain_fn = _explain_intr if kind == "intr" else _explain_vit
    return explain_fn(model, processor, images, class_ids, args)


# ---------------------------------------------------------------- writing


def _class_map(class_maps, head):
    """One class's resized map of `head` (an index), or its head average for None."""
    return class_maps["average_resized"] if head is None else class_maps["heads_resized"][head]


def _draw_pictures(folder, explanation, kind, box, args):
    """Overlays (each a titled picture with a colour scale) and panels of one image."""
    image = explanation["image"]
    title = f"{explanation['label']} ({explanation['score']:.2f})"
    if kind == "intr":
        layer, num_layers = explanation["layer"]
        title += f", decoder layer {layer + 1} of {num_layers}"
        shown = [m for m in explanation["maps"] if m["head"] is None or args.heads is None or m["head"] in args.heads]
    else:
        shown = explanation["maps"]
    overlays = {m["name"]: overlay(image, m["map"], box=box) for m in shown}
    for entry in shown:
        picture = draw_single_map(overlays[entry["name"]], entry["map"], f"{title}\n{entry['name']}")
        save_picture(picture, folder / f"{entry['file']}.png")
    panel_name = "heads_panel.png" if kind == "intr" else "panel.png"
    save_picture(draw_maps_panel(image, overlays, title), folder / panel_name)
    if kind == "intr" and explanation["top_q"]:
        rows = {
            f"{m['label']} ({m['score']:.2f})": {
                entry["name"]: overlays[entry["name"]] if c == explanation["class_id"]
                else overlay(image, _class_map(m, entry["head"]), box=box)
                for entry in shown
            }
            for c, m in explanation["top_q"]
        }
        save_picture(draw_top_q_panel(rows, f"top-{len(rows)} classes by logit x heads"), folder / "top_q_panel.png")


def _summary(item, explanation, kind, model_name):
    """`summary.json` content of one image: predictions, and per map its peak and (with a box) localization."""
    image, maps, box = explanation["image"], explanation["maps"], item["bbox"]
    scores = localization_scores({m["name"]: m["map"] for m in maps}, box) if box is not None else {}
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
                "name": m["name"],
                "peak": list(peak_location(m["map"])),
                "peak_in_box": scores[m["name"]]["pointing_game"] if box is not None else None,
                "mass_in_box": scores[m["name"]]["mass_in_box"] if box is not None else None,
            }
            for m in maps
        ],
        "box_area_share": scores["random"]["mass_in_box"] if box is not None else None,
    }
    if kind == "intr":
        summary["layer"] = explanation["layer"][0]
        summary["top_q"] = [{"class_id": c, "label": m["label"], "score": m["score"]} for c, m in explanation["top_q"]]
    return summary


def write_image_outputs(folder, item, explanation, kind, model_name, args):
    """Write one image's pictures and `summary.json` into `folder` (created); return the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    if not args.no_pictures:
        _draw_pictures(folder, explanation, kind, item["bbox"], args)
    summary = _summary(item, explanation, kind, model_name)
    _write_json(folder / "summary.json", summary)
    return summary


def _write_json(path, content):
    """Write JSON atomically (a temporary file renamed over the target)."""
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(content, indent=1))
    temporary.replace(path)


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


def explain_items(model, processor, kind, items, args, name):
    """
    Explain `items` in batches. Yields `(item, explanation)` for every image that could be read and explained and
    `(item, reason)` (a string) for every other one, which is skipped.
    """
    with tqdm(total=len(items), unit="image", desc=name) as progress:
        for start in range(0, len(items), args.batch_size):
            batch, images = [], []
            for item in items[start : start + args.batch_size]:
                try:
                    images.append(read_image(item))
                    batch.append(item)
                except (ValueError, OSError) as error:
                    yield item, str(error)
            wanted = [args.class_index] * len(batch)
            try:
                explanations = explain_batch(kind, model, processor, images, wanted, args) if batch else []
            except ValueError:  # an image the processor refuses (e.g. too thin to resize): find it, keep the rest
                explanations = []
                for item, image, class_id in zip(batch, images, wanted):
                    try:
                        explanations += explain_batch(kind, model, processor, [image], [class_id], args)
                    except ValueError as error:
                        yield item, str(error).removeprefix("Image 0: ")
                        explanations.append(None)
            for item, explanation in zip(batch, explanations):
                if explanation is not None:
                    yield item, explanation
            progress.update(len(items[start : start + args.batch_size]))


def visualize_model(model_path, items, args, output_dir, many_models):
    """Explain every item with one model and write its outputs. Returns (summaries, faithfulness or None, skipped)."""
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


def write_totals(output_dir, items, localization, accuracy, faithfulness):
    """`localization.json` and `faithfulness.json` / `.png` over all images and models."""
    if localization:
        _write_json(output_dir / "localization.json", {
            "num_images": sum(i["bbox"] is not None for i in items), "accuracy": accuracy, "scores": localization,
            "random": "a uniformly random map: its expected score is the share of the image the box covers",
        })
    if faithfulness:
        _write_json(output_dir / "faithfulness.json", faithfulness)
        save_picture(draw_curves(faithfulness), output_dir / "faithfulness.png")


def run(args):
    """Read the inputs, explain them with every model, write the outputs. Returns (output folder, skipped lines)."""
    if args.dataset_path and not args.dataset_name:
        raise VisualizeError("--dataset_path needs --dataset_name (the dataset's folder under it).")
    if not args.model and not DEFAULT_MODEL.is_dir():
        raise VisualizeError(_NO_SAMPLE if not args.images else "pass --model DIR_OR_HUB_ID (the sample model of "
                             "the repository's examples/ is not installed with the package).")
    items = collect_images(args)
    output_dir = Path(args.output_dir)
    faithfulness, localization, accuracy, skipped = {}, {}, {}, []
    model_paths = args.model or [DEFAULT_MODEL]
    for model_path in model_paths:
        summaries, evaluation, model_skipped = visualize_model(
            model_path, items, args, output_dir, len(model_paths) > 1
        )
        skipped += [line for line in model_skipped if line not in skipped]
        name = Path(str(model_path).rstrip("/")).name
        localization.update(_average_localization(summaries, f"{name}: " if len(model_paths) > 1 else "")
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
    except VisualizeError as error:
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
