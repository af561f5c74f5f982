"""Specification tests for image-folder datasets: `modeling_intr.image_folders` (class folders, image extensions,
dataset columns, labels files) and the up-front image check of `modeling_intr.data` (CPU, tiny folders)."""

import numpy as np
import pytest
from PIL import Image

from modeling_intr.data import DataError, load_image_splits
from modeling_intr.image_folders import (
    IMAGE_EXTENSIONS,
    LabelNames,
    LabelsFileError,
    image_column,
    is_image_file,
    label_column,
    list_classes,
    read_labels_file,
)


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


# ------------------------------------------------------------------------------------------ labels files

# file name -> (content, class names, how it was read): every accepted format
ACCEPTED_LABELS_FILES = {
    "plain.txt": ("cardinal\n\nblue jay\n", ["cardinal", "blue jay"], "one name per line"),
    "numbered.txt": ("1 cardinal\n2 blue jay\n", ["cardinal", "blue jay"], "numbering '1 Name' stripped"),
    "cub.txt": ("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n", ["Black_footed_Albatross",
                "Laysan_Albatross"], "CUB numbering '1 001.Name' stripped"),
    "list.json": ('["cat", "dog"]', ["cat", "dog"], "JSON list"),
    "id2label.json": ('{"1": "dog", "0": "cat"}', ["cat", "dog"], "JSON id2label object"),
    "config.json": ('{"model_type": "intr", "id2label": {"0": "cat", "1": "dog"}}', ["cat", "dog"],
                    "JSON config's id2label"),
    "ids.csv": ("id,name\n1,dog\n0,cat\n", ["cat", "dog"], "CSV columns 'id', 'name'"),
    "ids.tsv": ("index\tlabel\n0\tcat\n1\tdog\n", ["cat", "dog"], "TSV columns 'index', 'label'"),
    "names.csv": ('species\n"chickadee, black-capped"\nowl\n', ["chickadee, black-capped", "owl"],
                  "CSV column 'species'"),
}


@pytest.mark.parametrize("file_name", list(ACCEPTED_LABELS_FILES))
def test_accepted_labels_files_give_the_names_and_say_how_they_were_read(file_name, tmp_path):
    content, names, how = ACCEPTED_LABELS_FILES[file_name]
    (tmp_path / file_name).write_text(content)
    labels = read_labels_file(tmp_path / file_name)
    assert list(labels) == names and labels.how == how and isinstance(labels, LabelNames)
    assert str(labels) == f"{len(names)} names from {file_name} ({how})"


# file name -> (content, the error): ambiguous numbering and unknown shapes are refused, never guessed
REFUSED_LABELS_FILES = {
    "partly_numbered.txt": ("3 toed sloth\nblue jay\n", "some lines are numbered '<n> <name>' but line 2 is not"),
    "zero_based.txt": ("0 cardinal\n1 blue jay\n", "count 1, 2, 3, ... in order, but line 1 is numbered 0"),
    "skipped.txt": ("1 001.a\n3 003.c\n", "line 2 is numbered 3"),
    "partly_prefixed.txt": ("1 001.a\n2 b\n", "line 2's name 'b' does not carry the '002.' prefix"),
    "mixed_widths.txt": ("1 001.a\n2 02.b\n", "line 2's name '02.b' does not carry the '002.' prefix"),
    "other_numbers.txt": ("1 001.a\n2 005.b\n", "line 2's name '005.b' does not carry the '002.' prefix"),
    "json.txt": ('["cat", "dog"]', "looks like JSON: name it .json"),
    "csv.txt": ("id,name\n0,cat\n", "looks like a CSV / TSV with a header"),
    "label2id.json": ('{"cat": 0, "dog": 1}', "JSON object whose keys are not the class indices 0..1"),
    "numbers.json": ("[1, 2]", "every class name must be a non-empty string"),
    "broken.json": ('["cat",', "is not valid JSON"),
    "no_columns.csv": ("a,b\n0,cat\n", "without an id column"),
    "one_based.csv": ("id,name\n1,cat\n2,dog\n", "must hold the class indices 0..1, each once"),
    "unquoted.csv": ("name\nchickadee, black-capped\n", "the header has one column but a row has 2 cells"),
    "header_only.csv": ("name\n", "needs a header row and one row per class"),
    "empty.txt": ("\n\n", "has no class names"),
    "duplicates.txt": ("cat\ndog\n cat\n", "duplicate class names ['cat']"),
}


@pytest.mark.parametrize("file_name", list(REFUSED_LABELS_FILES))
def test_ambiguous_or_unknown_labels_files_are_refused_naming_the_problem(file_name, tmp_path):
    content, error = REFUSED_LABELS_FILES[file_name]
    (tmp_path / file_name).write_text(content)
    with pytest.raises(LabelsFileError) as error_info:
        read_labels_file(tmp_path / file_name)
    message = str(error_info.value)
    assert error in message and file_name in message


def test_a_missing_labels_file_is_an_error():
    with pytest.raises(ValueError, match="does not exist"):
        read_labels_file("no/such/classes.txt")
