"""Inputs of the `intr-visualize` command: which images (paths, an image-folder split, a `datasets` split), their
boxes (`--bbox`, a `bbox` column, a `metadata.jsonl`), reading them as RGB, and loading the models."""

import json
from pathlib import Path

from transformers import AutoImageProcessor, AutoModelForImageClassification

from .image_folders import image_column, is_image_file, label_column, list_classes
from .image_processing_intr import load_image, to_rgb_array


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEFAULT_MODEL = EXAMPLES / "intr-digits"
DEFAULT_IMAGE = EXAMPLES / "sample_digit.png"


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


def model_sources(args):
    """The models to compare (`--model`, default the sample model of a repository checkout); checks the options that
    choose the images before any model is loaded."""
    if args.dataset_path and not args.dataset_name:
        raise VisualizeError("--dataset_path needs --dataset_name (the dataset's folder under it).")
    if not args.model and not DEFAULT_MODEL.is_dir():
        raise VisualizeError(_NO_SAMPLE if not args.images else "pass --model DIR_OR_HUB_ID (the sample model of "
                             "the repository's examples/ is not installed with the package).")
    return args.model or [DEFAULT_MODEL]


def collect_images(args):
    """
    The images to explain: `[{"path", "name", "load", "true_class", "bbox"}]` (`load()` opens the image), from
    the positional paths, or one split of a dataset filtered by `--class_index`: the image-folder layout under
    `--dataset_path`, or without it the `datasets` dataset `--dataset_name` (as `run_finetune.py` reads them).
    Boxes come from `--bbox` (a single image), a `bbox` column, or a `metadata.jsonl` (see `modeling_intr.visualize`).
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
