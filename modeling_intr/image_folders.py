"""Image-folder datasets: the one place that knows how class folders, image files, dataset columns and label files
look. Training (`data.py`, `run_finetune.py`), the converter (`--labels_from_dir`, `--labels`), the visualize command
and the examples all call these helpers, so they agree on which files are images and which folders are classes.

- `IMAGE_EXTENSIONS` / `is_image_file`: the extensions `datasets`' imagefolder loader reads.
- `list_classes(folder)`: sorted class-folder names, hidden folders (`.ipynb_checkpoints`, ...) skipped, as the loader.
- `image_column(features)` / `label_column(features)`: the `Image` and `ClassLabel` columns of a `datasets` split.
- `read_labels_file(path)`: class names from a labels file (text, JSON or CSV), as `LabelNames` saying how.
- `labels_from_image_folder(folder)`: `list_classes` that also refuses class folders without files.
"""

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class LabelNames(Sequence):
    """
    Class names (index 0 first) and where they came from: a sequence of `names` that also says how it was read,
    `str()` e.g. "200 names from classes.txt (CUB numbering '1 001.Name' stripped)". Anything that takes a list
    of class names takes it; the converter's summary prints its description.
    """

    names: tuple[str, ...]
    source: str  # e.g. the file name
    how: str  # the format and any normalisation

    def __getitem__(self, index):
        return self.names[index]

    def __len__(self) -> int:
        return len(self.names)

    def __str__(self) -> str:
        return f"{len(self.names)} names from {self.source} ({self.how})"


LABELS_FILE_FORMATS = (
    "accepted: one name per line (optionally CUB-numbered '1 001.Name' on every line), a JSON list of names, a JSON "
    'object {"0": name, ...} (or a config with "id2label"), or a .csv / .tsv with a header: an id/index column and a '
    "name/label column, or a single name column"
)
ID_COLUMNS = ("id", "index", "idx", "class_id", "class_index", "label_id")
NAME_COLUMNS = ("name", "label", "class", "class_name", "label_name")


class LabelsFileError(ValueError):
    """A labels file that is not in an accepted format; the message names the problem and the accepted formats."""


def read_labels_file(path: str | Path) -> LabelNames:
    """
    Class names, index 0 first, from a labels file, with what was done to read them (`LabelNames`). Formats:

    - `.json`: a list of names, or an object `{"0": name, ..., "n-1": name}`, or a config holding such an object
      under `"id2label"` (keys must be exactly 0..n-1).
    - `.csv` / `.tsv`: a header row, then either an id column (`id`, `index`, `class_id`, ...) holding 0..n-1 and a
      name column (`name`, `label`, `class`, ...), or one column of names.
    - anything else: one name per line, blank lines skipped, each line kept verbatim, except CUB's numbering: when
      EVERY line is `<n> <name>` with n = 1, 2, ..., N in order, the numbers are stripped, and then the `NNN.`
      prefix of the names too when EVERY name carries it with the same width and n's number
      (`1 001.Black_footed_Albatross` -> `Black_footed_Albatross`).

    Ambiguous numbering is rejected, never guessed: some lines numbered and others not, numbers out of order or
    not starting at 1, or `NNN.` prefixes on some names only, of different widths or other numbers (give such names
    as a JSON list to keep them verbatim). So are text files that hold JSON or a CSV header (rename them), empty or
    duplicate names and unknown JSON / CSV shapes: `LabelsFileError` (a `ValueError`) naming the problem and the
    accepted formats.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelsFileError(f"Labels file {path} does not exist.")
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix == ".json":
        names, how = _labels_from_json(path, text)
    elif suffix in (".csv", ".tsv"):
        names, how = _labels_from_csv(path, text, "\t" if suffix == ".tsv" else ",")
    else:
        names, how = _labels_from_lines(path, text)
    if not names:
        raise LabelsFileError(f"Labels file {path} has no class names.")
    if not all(isinstance(name, str) and name.strip() for name in names):
        raise LabelsFileError(f"Labels file {path}: every class name must be a non-empty string.")
    names = [name.strip() for name in names]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise LabelsFileError(f"Labels file {path}: duplicate class names {duplicates}.")
    return LabelNames(tuple(names), path.name, how)


def _labels_from_json(path: Path, text: str) -> tuple[list[str], str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise LabelsFileError(f"Labels file {path} is not valid JSON ({error}); {LABELS_FILE_FORMATS}.") from None
    how = "JSON list"
    if isinstance(data, dict) and isinstance(data.get("id2label"), dict):
        data, how = data["id2label"], "JSON config's id2label"
    elif isinstance(data, dict):
        how = "JSON id2label object"
    if isinstance(data, dict):
        if set(data) != {str(index) for index in range(len(data))}:
            raise LabelsFileError(f"Labels file {path} is a JSON object whose keys are not the class indices "
                                  f"0..{len(data) - 1} (got {sorted(data)[:5]}); {LABELS_FILE_FORMATS}.")
        data = [data[str(index)] for index in range(len(data))]
    if not isinstance(data, list):
        raise LabelsFileError(f"Labels file {path} holds a JSON {type(data).__name__}; {LABELS_FILE_FORMATS}.")
    return data, how


def _labels_from_csv(path: Path, text: str, delimiter: str) -> tuple[list[str], str]:
    kind = "TSV" if delimiter == "\t" else "CSV"
    rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise LabelsFileError(f"Labels file {path} needs a header row and one row per class; {LABELS_FILE_FORMATS}.")
    header = [cell.strip().lower() for cell in rows[0]]
    if len(header) == 1:
        extra = next((row for row in rows[1:] if len(row) > 1), None)
        if extra:
            raise LabelsFileError(f"Labels file {path}: the header has one column but a row has {len(extra)} cells "
                                  f"({extra}); quote names that hold the delimiter.")
        return [row[0] for row in rows[1:]], f"{kind} column '{rows[0][0].strip()}'"
    id_column = next((header.index(name) for name in ID_COLUMNS if name in header), None)
    name_column = next((header.index(name) for name in NAME_COLUMNS if name in header), None)
    if id_column is None or name_column is None:
        raise LabelsFileError(f"Labels file {path}: a {kind} header {rows[0]} without an id column {ID_COLUMNS} and "
                              f"a name column {NAME_COLUMNS}; {LABELS_FILE_FORMATS}.")
    try:
        by_id = {int(row[id_column]): row[name_column] for row in rows[1:]}
    except (ValueError, IndexError):
        raise LabelsFileError(f"Labels file {path}: every row needs an integer {rows[0][id_column]!r} and a "
                              f"{rows[0][name_column]!r}.") from None
    if sorted(by_id) != list(range(len(rows) - 1)):
        raise LabelsFileError(f"Labels file {path}: the {rows[0][id_column]!r} column must hold the class indices "
                              f"0..{len(rows) - 2}, each once.")
    columns = f"{kind} columns '{rows[0][id_column].strip()}', '{rows[0][name_column].strip()}'"
    return [by_id[index] for index in range(len(by_id))], columns


def _labels_from_lines(path: Path, text: str) -> tuple[list[str], str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0][0] in "[{":
        raise LabelsFileError(f"Labels file {path} looks like JSON: name it .json to read it as JSON; "
                              f"{LABELS_FILE_FORMATS}.")
    header = {cell.strip() for cell in re.split(r"[,\t]", lines[0].lower())} if lines else set()
    if len(header) > 1 and header & {*ID_COLUMNS, *NAME_COLUMNS}:
        raise LabelsFileError(f"Labels file {path} looks like a CSV / TSV with a header ({lines[0]!r}): name it "
                              f".csv or .tsv; {LABELS_FILE_FORMATS}.")
    numbered = [re.fullmatch(r"(\d+)\s+(\S.*)", line) for line in lines]
    if not any(numbered):
        return lines, "one name per line"
    ambiguous = ("numbering is ambiguous, so nothing is stripped; give the names as a JSON list to keep the lines "
                 "verbatim")
    if not all(numbered):
        row = next(row for row, match in enumerate(numbered, start=1) if not match)
        raise LabelsFileError(f"Labels file {path}: some lines are numbered '<n> <name>' but line {row} is not; "
                              f"{ambiguous}.")
    wrong = next(((row, match[1]) for row, match in enumerate(numbered, start=1) if int(match[1]) != row), None)
    if wrong:
        raise LabelsFileError(f"Labels file {path}: numbered lines must count 1, 2, 3, ... in order, but line "
                              f"{wrong[0]} is numbered {wrong[1]}; {ambiguous}.")
    names = [match[2] for match in numbered]
    prefixed = [re.match(r"(\d+)\.(?=\S)", name) for name in names]
    if not any(prefixed):
        return names, "numbering '1 Name' stripped"
    width = len(prefixed[0][1]) if prefixed[0] else 0
    bad = next((row for row, match in enumerate(prefixed, start=1)
                if not match or len(match[1]) != width or int(match[1]) != row), None)
    if bad:
        raise LabelsFileError(f"Labels file {path}: line {bad}'s name {names[bad - 1]!r} does not carry the "
                              f"'{'0' * (width - 1)}{bad}.' prefix the other names' numbering implies; {ambiguous}.")
    return [name[match.end():] for name, match in zip(names, prefixed)], (
        f"CUB numbering '1 {'0' * (width - 1)}1.Name' stripped"
    )


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
