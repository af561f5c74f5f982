"""Image-folder datasets: the one place that knows how class folders, image files, dataset columns and label files
look. Training (`data.py`, `run_finetune.py`), the converter (`--labels_from_dir`, `--labels`), the visualize command
and the examples all call these helpers, so they agree on which files are images and which folders are classes.

- `IMAGE_EXTENSIONS` / `is_image_file`: the extensions `datasets`' imagefolder loader reads.
- `list_classes(folder)`: sorted class-folder names, hidden folders (`.ipynb_checkpoints`, ...) skipped, as the loader.
- `image_column(features)` / `label_column(features)`: the `Image` and `ClassLabel` columns of a `datasets` split.
- `read_labels_file(path)`: class names from a labels file.
- `labels_from_image_folder(folder)`: `list_classes` that also refuses class folders without files.
"""

import re
from pathlib import Path

# The imagefolder loader's extensions (datasets.packaged_modules.imagefolder.ImageFolder.EXTENSIONS), and the
# metadata files it reads beside the class folders; written out so the command lines work without `datasets`.
IMAGE_EXTENSIONS = frozenset(
    ".blp .bmp .dib .bufr .cur .pcx .dcx .dds .ps .eps .fit .fits .fli .flc .ftc .ftu .gbr .gif .grib .png "
    ".apng .jp2 .j2k .jpc .jpf .jpx .j2c .icns .ico .im .iim .tif .tiff .jfif .jpe .jpg .jpeg .mpg .mpeg .msp .pcd "
    ".pxr .pbm .pgm .ppm .pnm .psd .bw .rgb .rgba .sgi .ras .tga .icb .vda .vst .webp .wmf .emf .xbm .xpm".split()
)
METADATA_FILENAMES = frozenset(("metadata.csv", "metadata.jsonl", "metadata.parquet"))


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_classes(folder: str | Path) -> list[str]:
    """The class names of `folder/<class>/<image>`: its sorted sub-folder names, hidden ones skipped (the loader's
    order). An absent folder gives `[]`."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(path.name for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def image_column(features) -> str | None:
    """The first `datasets.Image` column of a split's `features`, or None."""
    import datasets

    return next((name for name, feature in features.items() if isinstance(feature, datasets.Image)), None)


def label_column(features) -> str | None:
    """The first `datasets.ClassLabel` column of a split's `features`, or None."""
    import datasets

    return next((name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)), None)


def read_labels_file(path: str | Path) -> list[str]:
    """
    Class names, index 0 first, from a CUB-style `classes.txt` (`1 001.Black_footed_Albatross`: line i is class
    i - 1 and the name drops the numeric `001.` prefix) or a plain file with one name per line. Blank lines are
    skipped; a numbered file whose numbers are not 1, 2, 3, ... in order raises `ValueError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Labels file {path} does not exist.")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"Labels file {path} has no class names.")
    numbered = [re.match(r"^(\d+)\s+(\S.*)$", line) for line in lines]
    if not all(numbered):
        return lines
    wrong = [(row, match.group(1)) for row, match in enumerate(numbered, start=1) if int(match.group(1)) != row]
    if wrong:
        row, number = wrong[0]
        raise ValueError(f"Labels file {path} looks like CUB classes.txt but line {row} is numbered {number}.")
    return [re.sub(r"^\d+\.", "", match.group(2)) for match in numbered]


def labels_from_image_folder(train_dir: str | Path) -> list[str]:
    """
    The class names of an image folder `train_dir/<class>/<image>` (`list_classes`). A class folder without
    (non-hidden) files raises `ValueError`: the loader would drop that class and shift the labels after it.
    """
    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        raise ValueError(f"Image folder {train_dir} does not exist.")
    classes = list_classes(train_dir)
    if not classes:
        raise ValueError(f"Image folder {train_dir} has no class folders; expected {train_dir}/<class>/<image>.")
    empty = [name for name in classes if not any(path.is_file() for path in (train_dir / name).rglob("[!.]*"))]
    if empty:
        raise ValueError(
            f"Class folders without files in {train_dir} (the imagefolder loader would drop them): {empty}"
        )
    return classes
