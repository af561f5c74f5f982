"""DETR and INTR checkpoints into `IntrForImageClassification`: one pipeline, two entry points.

    read safely   -> detect the layout -> map every name to INTR's -> config            -> queries, presence, weights
    checkpoint_io    checkpoint_layouts   checkpoint_layouts            checkpoint_config    this module

`convert_with_summary(...)` runs it and returns a `Conversion` (the model and its `ConversionSummary`);
`convert_to_model` and `load_reference_checkpoint` are thin entry points on it. Copied tensors keep their bits
(float16 sources are cast exactly to float32). DETR's object queries become one query per class
(`expand_class_queries`), DETR's detection heads are dropped and the presence head is new; an INTR checkpoint keeps
both. Writing a Hub folder is `convert.py`'s job.
"""

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint_config import GIVEN, LAYOUT_DEFAULT, build_config, recorded_values
from .checkpoint_io import CheckpointError, read_checkpoint
from .checkpoint_layouts import LAYOUTS, detect_layout, map_to_intr_names
from .image_folders import LabelNames
from .modeling_intr import IntrForImageClassification

logger = logging.getLogger(__name__)


class LabelsError(ValueError):
    """Class names or a class count that cannot make a classifier from this checkpoint."""


@dataclass
class ConversionSummary:
    """What a conversion did and where every config value came from; `str()` is the text the CLI prints."""

    source: str  # file name, or "an in-memory checkpoint"
    sha256: str | None  # of the source file
    layout: str  # a `LAYOUTS` key
    config_origins: dict[str, tuple[object, str]]  # IntrConfig name -> (value, where it came from)
    id2label: dict[int, str]
    class_queries: str
    presence_head: str
    dropped: list[str]  # source keys not converted (DETR's detection heads)
    notes: list[str] = field(default_factory=list)
    labels_source: str | None = None  # how the class names were read, e.g. "200 names from classes.txt (...)"
    output_dir: Path | None = None
    files: list[str] = field(default_factory=list)

    @property
    def dropped_text(self) -> str:
        if not self.dropped:
            return "nothing"
        modules = sorted({name.split(".")[0] + ".*" for name in self.dropped})
        return f"{len(self.dropped)} detection-head tensors ({', '.join(modules)})"

    @property
    def config_text(self) -> list[str]:
        """One `name = value (origin)` line per config value."""
        return [f"{name} = {value} ({origin})" for name, (value, origin) in self.config_origins.items()]

    def __str__(self) -> str:
        labels = list(self.id2label.values())
        shown = ", ".join(labels[:3]) + (f", ..., {labels[-1]}" if len(labels) > 3 else "")
        config = self.config_text
        lines = [
            f"Converted {self.source}" + (f" (sha256 {self.sha256})" if self.sha256 else ""),
            f"  source layout : {self.layout}: {LAYOUTS[self.layout]}",
            f"  config        : {config[0]}",
            *(f"                  {line}" for line in config[1:]),
            f"  classes       : {len(labels)} ({shown})",
            *([f"  labels        : {self.labels_source}"] if self.labels_source else []),
            f"  class queries : {self.class_queries}",
            f"  presence head : {self.presence_head}",
            f"  dropped       : {self.dropped_text}",
        ]
        lines += [f"  note          : {note}" for note in self.notes]
        if self.output_dir is not None:
            lines.append(f"  files written : {self.output_dir}/ {', '.join(self.files)}")
        return "\n".join(lines)


@dataclass
class Conversion:
    """The result of `convert_with_summary`: the model (float32, eval mode) and what was done to make it."""

    model: IntrForImageClassification
    summary: ConversionSummary


# ----------------------------------------------------------------------------------------------- steps


def class_names(
    id2label: Mapping[int, str] | Sequence[str] | None, num_labels: int | None, num_queries: int, is_intr: bool,
    reinit_class_queries: bool,
) -> dict[int, str]:
    """The classes `{index: name}`, checked against `num_labels` and an INTR checkpoint's query count."""
    if id2label is not None:
        if isinstance(id2label, Mapping):
            indices = sorted(int(index) for index in id2label)
            if indices != list(range(len(id2label))):
                raise LabelsError(f"id2label must have the indices 0..{len(id2label) - 1}, got {indices}.")
            names = [id2label[index] if index in id2label else id2label[str(index)] for index in range(len(id2label))]
        else:
            names = list(id2label)
        if num_labels is not None and num_labels != len(names):
            raise LabelsError(f"num_labels={num_labels} disagrees with the {len(names)} labels given.")
    elif num_labels is not None:
        names = [f"LABEL_{index}" for index in range(num_labels)]
    elif is_intr:
        names = [f"LABEL_{index}" for index in range(num_queries)]
    else:
        raise LabelsError(
            "A DETR checkpoint has no classes: give them (num_labels / id2label; on the command line --num_labels, "
            "--labels or --labels_from_dir)."
        )
    if len(names) < 2:
        raise LabelsError(
            f"Classification needs at least two classes, got {len(names)} ({names}): with one class every image "
            "gets it (and transformers would train a regression)."
        )
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise LabelsError(f"Duplicate class names: {duplicates}.")
    if is_intr and len(names) != num_queries and not reinit_class_queries:
        raise LabelsError(
            f"This INTR checkpoint has {num_queries} class queries but {len(names)} labels were given: give its "
            f"{num_queries} classes, or start from a DETR checkpoint to train new classes (or reinit_class_queries / "
            "--reinit_class_queries to replace its queries)."
        )
    return dict(enumerate(names))


def expand_class_queries(
    queries: torch.Tensor, num_labels: int, noise_frac: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """
    One query per class from `queries` [Q, d] (DETR's object queries): [num_labels, d], same dtype.

    With C = `num_labels` <= Q the first C rows are kept. Otherwise the Q rows are repeated floor(C / Q) times, the
    first C mod Q rows appended, and `noise_frac * N(0, 1)` noise (drawn from `generator`) added to every row from Q on;
    rows 0..Q-1 are always exact copies.
    """
    num_queries = queries.shape[0]
    if num_labels <= num_queries:
        return queries[:num_labels].clone()
    rows = torch.cat([queries.repeat(num_labels // num_queries, 1), queries[: num_labels % num_queries]])
    noise = torch.randn(num_labels - num_queries, queries.shape[1], generator=generator, dtype=queries.dtype)
    rows[num_queries:] += noise_frac * noise
    return rows


def set_class_queries(
    weights: dict[str, torch.Tensor], num_classes: int, replace: bool, noise_frac: float, seed: int,
    generator: torch.Generator,
) -> str:
    """Turn the source's Q queries in `weights` into `num_classes` class queries; returns what was done."""
    queries = weights["model.class_queries.weight"].float()  # [Q, d]
    num_queries = queries.shape[0]
    if replace:  # an INTR checkpoint with other classes: the reference initialisation, N(0, 1)
        weights["model.class_queries.weight"] = torch.randn(num_classes, queries.shape[1], generator=generator)
        return f"{num_queries} checkpoint queries replaced by {num_classes} new N(0, 1) queries (seed {seed})"
    weights["model.class_queries.weight"] = expand_class_queries(queries, num_classes, noise_frac, generator)
    text = f"{num_queries} source queries -> {num_classes} classes: {min(num_classes, num_queries)} copied"
    if num_classes > num_queries:
        noise = f" + {noise_frac} * N(0, 1) noise (seed {seed})" if noise_frac else " without noise"
        text += f", {num_classes - num_queries} repeated{noise}"
    elif num_classes < num_queries:
        text += f", {num_queries - num_classes} unused"
    return text


def set_presence_head(weights: dict[str, torch.Tensor], d_model: int, seed: int, generator: torch.Generator) -> str:
    """A new presence head (Xavier-uniform weight, zero bias: the reference's) unless `weights` has one."""
    if "presence_head.weight" in weights:
        return "copied from the checkpoint"
    weights["presence_head.weight"] = torch.nn.init.xavier_uniform_(torch.empty(1, d_model), generator=generator)
    weights["presence_head.bias"] = torch.zeros(1)
    return f"new: Xavier-uniform weight, zero bias (seed {seed})"


def load_intr_weights(model: IntrForImageClassification, weights: dict[str, torch.Tensor]) -> None:
    """Load INTR-named weights strictly: missing, unexpected and wrong-shape keys raise `CheckpointError` by name."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = sorted(
        f"{name}: checkpoint {tuple(weights[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in set(weights) & set(expected)
        if weights[name].shape != expected[name].shape
    )
    problems = [f"{label} ({len(items)}): {items}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if items]
    if problems:
        raise CheckpointError("The checkpoint does not match the model; " + "; ".join(problems))
    model.load_state_dict({name: tensor.to(expected[name].dtype) for name, tensor in weights.items()}, strict=True)


def _notes(origins: Mapping[str, tuple[object, str]]) -> list[str]:
    """What the summary should point out: values taken from the layout rather than recorded in the file."""
    notes = []
    if origins.get("dilation", (None, ""))[1] == LAYOUT_DEFAULT:
        notes.append("dilation is not recorded in this file: off, as in the non-DC5 releases (pass --dilation for a "
                     "DC5 checkpoint)")
    if origins.get("num_attention_heads", (None, ""))[1] == LAYOUT_DEFAULT:
        notes.append("attention heads are not recorded in this file: 8, as in every DETR / INTR release")
    return notes


# ----------------------------------------------------------------------------------------------- entry points


def convert_with_summary(
    checkpoint: str | Path | Mapping,
    *,
    id2label: Mapping[int, str] | Sequence[str] | None = None,
    num_labels: int | None = None,
    noise_frac: float = 0.1,
    seed: int = 42,
    reinit_class_queries: bool = False,
    layouts: Sequence[str] = tuple(LAYOUTS),
    **config_overrides,
) -> Conversion:
    """
    Convert a DETR / INTR checkpoint into an `IntrForImageClassification` (float32, eval mode) and say how.

    Args:
        checkpoint: a `.pth` / `.bin` / `.safetensors` file, a Hugging Face DETR folder, or an already loaded
            `{"model": state_dict, "args": ...}` or state dict. Its layout is detected from the keys (`LAYOUTS`).
        id2label: the class names (a list, index 0 first, or `{index: name}`; a `LabelNames` from
            `image_folders.read_labels_file` also puts how they were read in the summary); else `num_labels` gives
            `LABEL_i`. An
            INTR checkpoint defaults to its own query count, and a different count is an error unless
            `reinit_class_queries`. At least two classes.
        num_labels: the number of classes C.
        noise_frac: scale of the N(0, 1) noise on the class queries beyond DETR's Q (see `expand_class_queries`).
        seed: seeds the query noise, then the new presence head (the reference's order).
        reinit_class_queries: for an INTR checkpoint whose query count differs from C: draw C new N(0, 1) queries
            (the reference initialisation) instead of raising.
        layouts: the layouts accepted (`load_reference_checkpoint` accepts only the authors' INTR releases).
        config_overrides: `IntrConfig` arguments the checkpoint does not record (`dilation`, `num_attention_heads`,
            `dropout`, ...); they win over the checkpoint's `args` / `config.json`.

    Raises `NotACheckpointError` / `UnsafeCheckpointError` for a file that cannot be read safely,
    `MissingConfigValueError` for heads or dilation that are neither recorded nor given, `CheckpointError` (their
    base, a `ValueError`) for an unknown layout or keys that do not match (by name), and `LabelsError` for classes
    that do not fit.
    """
    source = read_checkpoint(checkpoint)
    layout = detect_layout(source.state_dict)
    if layout not in layouts:
        raise CheckpointError(
            f"{source.name} is a {layout} checkpoint ({LAYOUTS[layout]}), not one of {list(layouts)}: convert it "
            "with modeling_intr.convert.convert_to_model (or convert_detr_checkpoint.py), giving its classes."
        )
    weights, dropped = map_to_intr_names(source.state_dict, layout)
    is_intr = layout == "intr_reference"
    num_queries = weights["model.class_queries.weight"].shape[0]
    labels = class_names(id2label, num_labels, num_queries, is_intr, reinit_class_queries)
    recorded, recorded_in = recorded_values(source.args, source.hf_config)
    labels_origin = GIVEN if id2label is not None or num_labels is not None else "keys: the checkpoint's class queries"
    config, origins = build_config(
        weights, recorded, recorded_in, config_overrides, labels, labels_origin, source.name
    )

    generator = torch.Generator().manual_seed(seed)
    replace = is_intr and len(labels) != num_queries
    queries_text = set_class_queries(weights, len(labels), replace, noise_frac, seed, generator)
    presence_text = set_presence_head(weights, config.d_model, seed, generator)
    model = IntrForImageClassification(config)
    load_intr_weights(model, weights)

    summary = ConversionSummary(
        source=source.name,
        sha256=source.sha256,
        layout=layout,
        config_origins=origins,
        id2label=labels,
        class_queries=queries_text,
        presence_head=presence_text,
        dropped=dropped,
        notes=_notes(origins),
        labels_source=str(id2label) if isinstance(id2label, LabelNames) else None,
    )
    return Conversion(model=model.eval(), summary=summary)


def convert_to_model(checkpoint: str | Path | Mapping, **options) -> IntrForImageClassification:
    """`convert_with_summary(checkpoint, **options).model` (see there for the options); logs the summary (INFO)."""
    conversion = convert_with_summary(checkpoint, **options)
    logger.info("%s", conversion.summary)
    return conversion.model


def load_reference_checkpoint(checkpoint: str | Path | Mapping, **config_overrides) -> IntrForImageClassification:
    """
    An `IntrForImageClassification` (eval mode, float32) from an authors' INTR checkpoint: a file path, or the loaded
    `{"model": ..., "args": ...}` dict. `config_overrides` go to the config (`id2label`, or values the file does not
    record, e.g. `num_attention_heads`). Every key must be accounted for: a missing or unexpected key raises
    `CheckpointError` naming it. `convert_with_summary` with `layouts=("intr_reference",)`.
    """
    labels = config_overrides.pop("id2label", None)
    config_overrides.pop("label2id", None)  # follows from id2label
    num_labels = config_overrides.pop("num_labels", None)
    return convert_with_summary(
        checkpoint, id2label=labels, num_labels=num_labels, layouts=("intr_reference",), **config_overrides
    ).model
