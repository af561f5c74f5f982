"""Specification tests for image-folder datasets: `modeling_intr.image_folders` (class folders, image extensions,
dataset columns) and the up-front image check of `modeling_intr.data` (CPU, tiny folders)."""

import numpy as np
import pytest
from PIL import Image

from modeling_intr.data import DataError, load_image_splits
from modeling_intr.image_folders import IMAGE_EXTENSIONS, image_column, is_image_file, label_column, list_classes


def test_image_extensions_are_the_imagefolder_loaders():
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    assert IMAGE_EXTENSIONS == frozenset(ImageFolder.EXTENSIONS)


def test_image_files_are_recognised_by_extension_in_any_case():
    assert is_image_file("a/b.JPG") and is_image_file("x.webp") and not is_image_file("notes.txt")


def test_class_folders_are_sorted_and_hidden_folders_skipped(tmp_path):
    for name in ("b", "a", ".ipynb_checkpoints", "10", "2"):
        (tmp_path / name).mkdir()
    (tmp_path / "readme.txt").write_text("not a class")
    assert list_classes(tmp_path) == ["10", "2", "a", "b"]
    assert list_classes(tmp_path / "absent") == []


def test_image_and_label_columns_are_found_by_feature_type():
    import datasets

    features = datasets.Features(
        caption=datasets.Value("string"), photo=datasets.Image(), species=datasets.ClassLabel(names=["x", "y"])
    )
    assert image_column(features) == "photo" and label_column(features) == "species"
    assert label_column(datasets.Features(photo=datasets.Image())) is None


# ---------------------------------------------------------------- data.py's up-front image check


def make_folder(root, files):
    """`root/digits/{train,val}/<class>/<file>`: each class gets one good image per split, plus `files` in train."""
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / "digits" / split / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((24, 32, 3), 90, dtype=np.uint8)).save(folder / "good.png")
    for relative, write in files.items():
        write(root / "digits" / "train" / relative)
    return root


def test_a_class_whose_every_training_image_is_unreadable_is_an_error_naming_it(tmp_path):
    root = make_folder(tmp_path, {"c/broken.png": lambda p: (p.parent.mkdir(parents=True), p.write_text("no"))})
    (root / "digits" / "val" / "c").mkdir()
    Image.new("RGB", (32, 24)).save(root / "digits" / "val" / "c" / "good.png")
    with pytest.raises(DataError, match=r"\['c'\] have no usable image in split 'train'"):
        load_image_splits(str(root), "digits", ["train", "validation"])


def test_images_too_thin_to_resize_are_skipped_by_name_and_counted(tmp_path):
    root = make_folder(tmp_path, {
        "a/strip.png": lambda p: Image.new("RGB", (3000, 1)).save(p),  # the resize rule would give it 0 rows
        "b/notes.txt": lambda p: p.write_text("not an image"),
    })
    data = load_image_splits(str(root), "digits", ["train", "validation"])
    # every skipped line is "<path relative to the dataset root>: <reason>", the reason not repeating the path
    notes, strip = data.skipped["train"]
    assert notes == "train/b/notes.txt: not an image file"
    assert strip.startswith("train/a/strip.png: ") and "the image is 1x3000 pixels" in strip
    assert str(tmp_path) not in strip and strip.count("strip.png") == 1
    assert data.counts() == {"train": {"kept": 2, "skipped": 2}, "validation": {"kept": 2, "skipped": 0}}
    assert data.kept == {"train": len(data.splits["train"]), "validation": len(data.splits["validation"])}
    with pytest.raises(DataError, match="strip.png"):
        load_image_splits(str(root), "digits", ["train"], strict_images=True)


def test_the_processors_own_resize_rule_is_checked_when_given(tmp_path):
    from modeling_intr import IntrImageProcessor

    # 1 x 1000 passes the training rule (longer side <= 1333 keeps 1 row) but not a processor bounded at 400
    root = make_folder(tmp_path, {"a/strip.png": lambda p: Image.new("RGB", (1000, 1)).save(p)})
    assert not load_image_splits(str(root), "digits", ["train"]).skipped["train"]
    processor = IntrImageProcessor(size={"shortest_edge": 200, "longest_edge": 400})
    data = load_image_splits(str(root), "digits", ["train"], image_processor=processor)
    assert len(data.skipped["train"]) == 1 and "strip.png" in data.skipped["train"][0]
