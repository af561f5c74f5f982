"""Data for fine-tuning INTR with the `Trainer`: the reference image-folder layout, image checks, the reference
(DETR-style) training augmentation written with PIL, and the padding collator.

Everything here is a plain function or a small callable, so it can be tested without a model:

- `check_image_folder`: the reference layout `ROOT/NAME/{train,val[,test]}/<class>/<image>` is complete and
  consistent (no missing split, no empty class folder, the same classes in every split) before anything is trained.
- `load_image_splits`: the splits as `datasets` (imagefolder, or a Hub dataset), with a `ClassLabel` column and every
  image checked once up front; unreadable ones are dropped with a logged count and names (or raise with `strict`).
- `TrainAugmentation`: random horizontal flip, then either a random multi-scale resize or resize + random crop +
  multi-scale resize (the reference's `make_coco_transforms("train")`), or a square resize (`fixed_size`).
- `ImageTransform` / `collate_images`: images to normalized tensors, batches padded bottom/right (with a `pixel_mask`
  when some image is padded).

Image decoding, mode conversion, the resize rule and padding are the image processor's (`image_processing_intr`);
class folders, image extensions and dataset columns are `image_folders`'; nothing here re-implements them.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import torch

from .image_folders import METADATA_FILENAMES, image_column, is_image_file, label_column, list_classes
from .image_processing_intr import decode_image, get_resize_output_size, pad_images, to_rgb_array

# Folder name in the reference layout -> split name given by `datasets`' imagefolder loader.
FOLDER_SPLITS = {"train": "train", "val": "validation", "test": "test"}
REFERENCE_SCALES = tuple(range(480, 801, 32))  # shorter side of the multi-scale resize
REFERENCE_MAX_SIZE = 1333


class DataError(ValueError):
    """A dataset that cannot be trained or evaluated on as it is (the message says what to fix)."""


@dataclass
class FolderReport:
    """What `check_image_folder` found: the classes (sorted folder names), the splits, their image files (relative
    to the root), and the files that are not images."""

    classes: list[str]
    splits: list[str]
    image_files: dict[str, list[str]] = field(default_factory=dict)
    ignored_files: list[str] = field(default_factory=list)


def check_image_folder(root: str | Path, required_splits: Sequence[str] = ("train", "val")) -> FolderReport:
    """
    Check the reference layout `root/{train,val[,test]}/<class>/<image>` before loading it.

    Raises `DataError` for a missing folder or required split, a class folder without images, or splits whose class
    folders differ (both differences are listed). Files without an image extension (other than `metadata.jsonl` /
    `.csv` / `.parquet` next to the class folders) are reported in `ignored_files` (relative to `root`): the
    imagefolder loader skips them.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Dataset folder {root} does not exist; expected {root}/{{train,val}}/<class>/<image>.")
    missing = [split for split in required_splits if not (root / split).is_dir()]
    if missing:
        raise DataError(f"Dataset folder {root} has no {missing} split folder(s); found "
                        f"{sorted(p.name for p in root.iterdir() if p.is_dir())}.")
    splits = [split for split in FOLDER_SPLITS if (root / split).is_dir()]
    classes_per_split, image_files, ignored = {}, {}, []
    for split in splits:
        split_dir = root / split
        ignored += [str(p.relative_to(root)) for p in split_dir.iterdir()
                    if p.is_file() and p.name not in METADATA_FILENAMES]
        class_dirs = [split_dir / name for name in list_classes(split_dir)]
        if not class_dirs:
            raise DataError(f"Split folder {split_dir} has no class folders; expected {split_dir}/<class>/<image>.")
        image_files[split] = []
        for class_dir in class_dirs:
            files = [p for p in class_dir.rglob("*") if p.is_file()]
            ignored += [str(p.relative_to(root)) for p in files if not is_image_file(p)]
            images = [str(p.relative_to(root)) for p in files if is_image_file(p)]
            if not images:
                raise DataError(f"Class folder {class_dir} has no images: remove it or add its images.")
            image_files[split] += images
        classes_per_split[split] = [p.name for p in class_dirs]
    reference_split, classes = splits[0], classes_per_split[splits[0]]
    for split, split_classes in classes_per_split.items():
        if split_classes != classes:
            raise DataError(
                f"Splits {reference_split!r} and {split!r} have different classes: only in {reference_split}: "
                f"{sorted(set(classes) - set(split_classes))}; only in {split}: "
                f"{sorted(set(split_classes) - set(classes))}."
            )
    return FolderReport(classes=classes, splits=splits, image_files=image_files, ignored_files=sorted(ignored))


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """
    Any PIL image as 8-bit RGB by the processor's one rule (`to_rgb_array`: EXIF orientation applied, 16-bit data
    scaled by its range, alpha dropped, ...), so training sees the pixels inference sees. Raises `ValueError` for an
    image that cannot be decoded (truncated or corrupt).
    """
    return PIL.Image.fromarray(to_rgb_array(image))


def open_image(source: dict | str | Path) -> PIL.Image.Image:
    """
    Open and fully decode an image given as a path or as a `datasets` image dict (`{"path", "bytes"}`), returning it
    in RGB. Raises `ValueError` with the reason for a missing, empty, non-image, truncated or corrupt file; the reason
    does not repeat the file's name (the caller names it).
    """
    if isinstance(source, dict) and source.get("bytes") is not None:
        data = source["bytes"]
    else:
        try:
            data = Path(source["path"] if isinstance(source, dict) else source).read_bytes()
        except OSError as error:
            raise ValueError(f"cannot be read ({error.strerror})") from None
    return to_rgb(decode_image(data))


def check_image_size(image: PIL.Image.Image, image_processor=None) -> None:
    """
    Raise `ValueError` for an image whose size the resize rules cannot handle (a side of 0 pixels after resizing,
    e.g. a 1 x 3000 strip): the training augmentation's (shorter side >= 480, longer side <= 1333) and, when given,
    the image processor's `shortest_edge` / `longest_edge` rule.
    """
    get_resize_output_size((image.height, image.width), min(REFERENCE_SCALES), REFERENCE_MAX_SIZE)
    size = getattr(image_processor, "size", None) or {}
    if size.get("shortest_edge"):
        get_resize_output_size((image.height, image.width), size["shortest_edge"], size.get("longest_edge"))


def find_unreadable_images(
    dataset: datasets.Dataset, image_column: str, image_processor=None, names: Sequence[str] | None = None
) -> tuple[list[int], list[str]]:
    """
    Decode every image of `dataset` once (as training would) and check its size (`check_image_size`); return the
    indices of the usable ones and a `"name: reason"` line for every other one. The name is `names[index]` (for a
    folder dataset: the file's path relative to the dataset root) or, without `names`, `image <index>`.
    """
    sources = dataset.cast_column(image_column, datasets.Image(decode=False))[image_column]
    readable, unreadable = [], []
    for index, source in enumerate(sources):
        try:
            with open_image(source) as image:
                check_image_size(image, image_processor)
        except (ValueError, OSError, PIL.Image.DecompressionBombError) as error:
            unreadable.append(f"{names[index] if names is not None else f'image {index}'}: {error}")
        else:
            readable.append(index)
    return readable, unreadable


@dataclass
class ImageSplits:
    """
    Loaded splits (`image` and `label` columns, plus any metadata), the class names, and per split what was kept
    and what was skipped:

    - `kept[split]`: number of images kept (the length of `splits[split]`: the images trained / evaluated on);
    - `skipped[split]`: one `"file: reason"` line per file left out (unreadable, not an image, too thin to resize,
      not listed in a metadata file).

    `counts()` gives both numbers per split, e.g. for `eval_results.json`.
    """

    splits: dict[str, datasets.Dataset]
    classes: list[str]
    skipped: dict[str, list[str]]
    kept: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """`{split: {"kept": n, "skipped": m}}` for every loaded split."""
        return {split: {"kept": self.kept[split], "skipped": len(self.skipped[split])} for split in self.splits}


def load_image_splits(
    dataset_path: str | None,
    dataset_name: str,
    splits: Sequence[str],
    strict_images: bool = False,
    cache_dir: str | None = None,
    image_processor=None,
) -> ImageSplits:
    """
    Load `splits` (`datasets` split names: "train", "validation", "test") of the reference layout
    `dataset_path/dataset_name/{train,val,test}/<class>/<image>` with the imagefolder loader, or of the Hub dataset
    `dataset_name` when `dataset_path` is None, and check every image up front.

    For a folder, the classes are its sorted class-folder names and each image's label is its folder (also when a
    `metadata.jsonl` is present, whose fields become extra columns). A Hub dataset needs an `Image` and a `ClassLabel`
    column. Returned datasets have the columns `image` and `label`. Unreadable images (and, for a folder, files that
    are not images, or images that a `metadata.jsonl` does not list, which the loader leaves out) are dropped and
    listed in `skipped` per split; with `strict_images` they raise `DataError`. So are images too thin for the resize
    rules (`check_image_size`, with `image_processor`'s rule when given). A class whose every image in a split was
    skipped raises `DataError` naming it.
    """
    if dataset_path is not None:
        root = (Path(dataset_path) / dataset_name).resolve()
        folder_names = {split_name: folder for folder, split_name in FOLDER_SPLITS.items()}
        report = check_image_folder(root, [folder_names[split] for split in splits])
        loaded = datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=cache_dir)
        classes = report.classes
        skipped = {split: [f"{name}: not an image file" for name in report.ignored_files
                           if name.startswith(folder_names[split] + "/")] for split in splits}
    else:
        loaded = datasets.load_dataset(dataset_name, cache_dir=cache_dir)
        missing = [split for split in splits if split not in loaded]
        if missing:
            raise DataError(f"Dataset {dataset_name!r} has no split(s) {missing}; it has {list(loaded)}.")
        classes, skipped = None, {split: [] for split in splits}

    result = {}
    for split in splits:
        dataset = loaded[split]
        image_name, label_name = image_column(dataset.features), label_column(dataset.features)
        if image_name is None:
            raise DataError(f"Split {split!r} of {dataset_name!r} has no image column: {dataset.features}.")
        if dataset_path is not None:
            dataset, loaded_files = _labels_from_folders(dataset, image_name, root, classes)
            unlisted = sorted(set(report.image_files[folder_names[split]]) - set(loaded_files))
            skipped[split] += [f"{name}: not listed in the metadata file, left out by the loader" for name in unlisted]
        else:
            loaded_files = None  # a Hub dataset's images are named by their index
            if label_name is None:
                raise DataError(f"Split {split!r} of {dataset_name!r} has no ClassLabel column: {dataset.features}.")
            split_classes = dataset.features[label_name].names
            if classes is not None and split_classes != classes:
                raise DataError(f"Splits of {dataset_name!r} have different classes: {classes} vs {split_classes}.")
            classes = split_classes
            dataset = dataset.rename_columns({name: new for name, new in ((image_name, "image"),
                                              (label_name, "label")) if name != new})
        readable, unreadable = find_unreadable_images(dataset, "image", image_processor, loaded_files)
        skipped[split] += unreadable
        if skipped[split] and strict_images:
            raise DataError(f"{len(skipped[split])} unreadable file(s) in split {split!r} (--strict_images): "
                            + "; ".join(skipped[split]))
        if not readable:
            raise DataError(f"Split {split!r} of {dataset_name!r} has no readable image.")
        result[split] = dataset.select(readable) if unreadable else dataset
        # a class whose every image was skipped would silently train / evaluate with none of it
        emptied = sorted(set(dataset["label"]) - set(result[split]["label"]))
        if emptied:
            raise DataError(
                f"Class(es) {[classes[label] for label in emptied]} have no usable image in split {split!r}: every "
                "one of their images was skipped (see above); fix or replace those images, or remove the class."
            )
    kept = {split: len(dataset) for split, dataset in result.items()}
    return ImageSplits(splits=result, classes=list(classes), skipped=skipped, kept=kept)


def _labels_from_folders(
    dataset: datasets.Dataset, image_column: str, root: Path, classes: list[str]
) -> tuple[datasets.Dataset, list[str]]:
    """
    Set `label` (a `ClassLabel` over `classes`) from each image's parent folder and name the image column `image`;
    also return the image paths relative to `root`.
    """
    sources = dataset.cast_column(image_column, datasets.Image(decode=False))[image_column]
    paths = [Path(source["path"]).resolve() for source in sources]
    labels = [classes.index(path.parent.name) for path in paths]
    if "label" in dataset.column_names:
        dataset = dataset.remove_columns("label")
    if image_column != "image":
        dataset = dataset.rename_column(image_column, "image")
    dataset = dataset.add_column("label", labels, feature=datasets.ClassLabel(names=classes))
    return dataset, [str(path.relative_to(root)) for path in paths]


def _resize(image: PIL.Image.Image, size: int, max_size: int | None) -> PIL.Image.Image:
    """Shorter side to `size` (longer side <= `max_size`), the reference rule, bilinear."""
    height, width = get_resize_output_size((image.height, image.width), size, max_size)
    if (height, width) == (image.height, image.width):
        return image
    return image.resize((width, height), PIL.Image.BILINEAR)


class TrainAugmentation:
    """
    The reference training augmentation on PIL images (DETR's `make_coco_transforms("train")` without boxes):

        random horizontal flip (probability `flip_prob`), then with probability 1/2
            resize the shorter side to a random one of `scales` (longer side <= `max_size`)
        otherwise
            resize the shorter side to a random one of `crop_scales`, crop a random region with sides in
            `crop_size` (bounded by the image), then resize as in the first branch.

    With `fixed_size=N` it is the fast square mode instead: random flip, then resize to N x N.
    Randomness comes from Python's `random` module, which the `Trainer` seeds, checkpoints and restores, and which
    PyTorch re-seeds in each dataloader worker.
    """

    def __init__(
        self,
        fixed_size: int | None = None,
        flip_prob: float = 0.5,
        scales: Sequence[int] = REFERENCE_SCALES,
        max_size: int = REFERENCE_MAX_SIZE,
        crop_scales: Sequence[int] = (400, 500, 600),
        crop_size: tuple[int, int] = (384, 600),
    ):
        self.fixed_size = fixed_size
        self.flip_prob = flip_prob
        self.scales = list(scales)
        self.max_size = max_size
        self.crop_scales = list(crop_scales)
        self.crop_size = crop_size

    def __call__(self, image: PIL.Image.Image) -> PIL.Image.Image:
        return self.resize(self.flip(image))

    def flip(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """Mirror left-right with probability `flip_prob`."""
        if random.random() < self.flip_prob:
            return image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
        return image

    def resize(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """The size part: square resize (`fixed_size`), or the reference's random multi-scale resize / crop."""
        if self.fixed_size is not None:
            return image.resize((self.fixed_size, self.fixed_size), PIL.Image.BILINEAR)
        if random.random() < 0.5:
            return _resize(image, random.choice(self.scales), self.max_size)
        image = _resize(image, random.choice(self.crop_scales), None)
        image = self.random_crop(image)
        return _resize(image, random.choice(self.scales), self.max_size)

    def random_crop(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """DETR's `RandomSizeCrop(min, max)`: sides drawn in [min, min(image side, max)], position uniform."""
        low, high = self.crop_size
        width = random.randint(min(low, image.width), min(image.width, high))
        height = random.randint(min(low, image.height), min(image.height, high))
        left = random.randint(0, image.width - width)
        top = random.randint(0, image.height - height)
        return image.crop((left, top, left + width, top + height))


class ImageTransform:
    """
    `datasets` transform (`Dataset.with_transform`): a batch of examples -> `pixel_values` (one normalized
    `[3, h, w]` tensor per image, sizes may differ) and `labels`.

    Without `augmentation` the images go through `image_processor` as at inference (its resize, e.g. shortest edge
    800 or a fixed square); with one, the augmentation sizes them and the processor only rescales and normalizes.
    """

    def __init__(self, image_processor, augmentation: TrainAugmentation | None = None):
        self.image_processor = image_processor
        self.augmentation = augmentation

    def __call__(self, batch: dict) -> dict:
        images = [to_rgb(image) for image in batch["image"]]
        options = {"do_pad": False}
        if self.augmentation is not None:
            images = [self.augmentation(image) for image in images]
            options["do_resize"] = False
        pixel_values = self.image_processor(images, **options)["pixel_values"]
        return {"pixel_values": [torch.from_numpy(np.asarray(values)) for values in pixel_values],
                "labels": batch["label"]}


def collate_images(examples: list[dict]) -> dict[str, torch.Tensor]:
    """`Trainer` data collator: `ImageTransform` outputs -> `pixel_values` padded bottom/right (the processor's
    `pad_images`), `labels`, and a `pixel_mask` only if some image is padded. The mask is checked here, on the CPU:
    a batch without one costs the model no read of its mask on the host, which on a GPU would wait for the device to
    finish the previous step (a fixed-size batch is never padded)."""
    pixel_values, pixel_mask = pad_images([example["pixel_values"] for example in examples])
    labels = torch.tensor([example["labels"] for example in examples], dtype=torch.long)
    if bool(pixel_mask.all()):
        return {"pixel_values": pixel_values, "labels": labels}
    return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "labels": labels}


__all__ = [
    "DataError",
    "FolderReport",
    "ImageSplits",
    "ImageTransform",
    "TrainAugmentation",
    "check_image_folder",
    "check_image_size",
    "collate_images",
    "find_unreadable_images",
    "load_image_splits",
    "open_image",
    "pad_images",
    "to_rgb",
]
